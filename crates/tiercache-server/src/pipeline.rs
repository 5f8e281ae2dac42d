//! The `Pipeline` bidirectional stream of `CacheService`: Get/Set/Delete requests tagged with
//! ids, run concurrently (up to `limits.pipeline_max_in_flight` per stream) and answered as each
//! finishes. An operation's failure is a `PipelineError` answer carrying the status the unary
//! call would have returned; only a broken stream ends it.
//!
//! A layer below the unary service: it runs whatever implements [`Operations`], as the cache
//! service does with its unary handlers, and knows nothing else of it.

use std::future::Future;

use bytes::{Buf, BufMut, Bytes};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prost::Message;
use tiercache_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::error::ApiError;

/// The operations a pipeline carries, each answered as its unary RPC would be.
pub trait Operations: Clone + Send + Sync + 'static {
    fn get(
        &self,
        req: pb::GetRequest,
    ) -> impl Future<Output = Result<pb::GetResponse, ApiError>> + Send;
    fn set(
        &self,
        req: pb::SetRequest,
    ) -> impl Future<Output = Result<pb::SetResponse, ApiError>> + Send;
    fn delete(
        &self,
        req: pb::DeleteRequest,
    ) -> impl Future<Output = Result<pb::DeleteResponse, ApiError>> + Send;
}

/// A `PipelineRequest` as it came off the wire: decoding keeps the bytes, so a malformed
/// message cannot break the stream (a decode error inside tonic's stream would end it).
#[derive(Clone, Default, PartialEq)]
pub struct RawPipelineRequest(pub Bytes);

impl std::fmt::Debug for RawPipelineRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawPipelineRequest({} bytes)", self.0.len())
    }
}

impl Message for RawPipelineRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn merge(&mut self, mut buf: impl Buf) -> Result<(), prost::DecodeError> {
        self.0 = buf.copy_to_bytes(buf.remaining());
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

impl RawPipelineRequest {
    /// Decodes the request; a malformed one is answered by the id read from its bytes (0 when
    /// even that cannot be read).
    fn into_request(self) -> Result<pb::PipelineRequest, Box<pb::PipelineResponse>> {
        pb::PipelineRequest::decode(self.0.clone()).map_err(|e| {
            Box::new(pb::PipelineResponse {
                id: crate::codec::leading_id(&self.0).unwrap_or(0),
                result: Some(pb::pipeline_response::Result::Error(error(Status::from(
                    crate::codec::malformed(
                        "tiercache.v1.PipelineRequest",
                        &self.0,
                        &e.to_string(),
                    ),
                )))),
            })
        })
    }
}

/// Answers the requests of `inbound` on the returned stream, at most `max_in_flight` at a time,
/// until the client closes its side and every answer is out, or the client goes away. Once
/// `drained` completes (the server shuts down) no more requests are read: the ones in flight
/// are answered and the stream ends with `UNAVAILABLE` (`DRAINING`), so the client resends what
/// was not answered to another replica. `open` is dropped when the stream's task ends.
pub fn serve<O: Operations>(
    ops: O,
    mut inbound: Streaming<RawPipelineRequest>,
    max_in_flight: usize,
    drained: impl Future<Output = ()> + Send + 'static,
    open: impl Send + 'static,
) -> ReceiverStream<Result<pb::PipelineResponse, Status>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // Held for as long as the stream's task runs (a gauge of open streams).
        let _open = open;
        let mut in_flight = FuturesUnordered::new();
        let mut input_open = true;
        let mut draining = false;
        tokio::pin!(drained);
        loop {
            if draining && in_flight.is_empty() {
                let status: Status = ApiError::from(tiercache_core::CoreError::Draining).into();
                let _ = tx.send(Err(status)).await;
                return;
            }
            tokio::select! {
                () = &mut drained, if !draining && input_open => {
                    draining = true;
                    input_open = false;
                }
                msg = inbound.message(), if input_open && in_flight.len() < max_in_flight => {
                    match msg {
                        Ok(Some(raw)) => {
                            let req = match raw.into_request() {
                                Ok(req) => req,
                                Err(answer) => {
                                    if tx.send(Ok(*answer)).await.is_err() {
                                        return;
                                    }
                                    continue;
                                }
                            };
                            let ops = ops.clone();
                            let mut call = Box::pin(async move { one(&ops, req).await });
                            // Most requests (L1 hits) finish on their first poll: answer them
                            // at once rather than through the queue and a wake-up.
                            match futures::poll!(call.as_mut()) {
                                std::task::Poll::Ready(resp) => {
                                    if tx.send(Ok(resp)).await.is_err() {
                                        return;
                                    }
                                }
                                std::task::Poll::Pending => in_flight.push(call),
                            }
                        }
                        Ok(None) => input_open = false,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Some(resp) = in_flight.next(), if !in_flight.is_empty() => {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Runs one request and tags its answer with the request's id.
async fn one<O: Operations>(ops: &O, req: pb::PipelineRequest) -> pb::PipelineResponse {
    use pb::pipeline_request::Operation;
    use pb::pipeline_response::Result as R;
    let result = match req.operation {
        Some(Operation::Get(r)) => ops.get(r).await.map(R::Get),
        Some(Operation::Set(r)) => ops.set(r).await.map(R::Set),
        Some(Operation::Delete(r)) => ops.delete(r).await.map(R::Delete),
        None => Err(ApiError::field("operation", "must be set")),
    };
    let result = result.unwrap_or_else(|e| R::Error(error(Status::from(e))));
    pb::PipelineResponse {
        id: req.id,
        result: Some(result),
    }
}

/// Carries a failed operation's status inside the stream.
fn error(s: Status) -> pb::PipelineError {
    pb::PipelineError {
        code: s.code() as i32,
        message: s.message().to_string(),
        details: s.details().to_vec().into(),
    }
}
