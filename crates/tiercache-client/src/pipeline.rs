//! The `Pipeline` multiplexer: one bidirectional stream per client that carries Get/Set/Delete
//! requests tagged with ids, answered out of order. A layer below `client`: it needs only the
//! channel and the metadata interceptor (`transport`).
//!
//! Each request takes an id from an atomic counter and parks a oneshot sender in the pending
//! map; a reader task reads answers and completes the matching sender. When the stream fails or
//! ends, every pending request fails with `UNAVAILABLE` and the next request opens a new stream.
//! Errors inside the stream (`PipelineError`) are rebuilt into the `tonic::Status` the unary call
//! would have returned, so they map to the same [`Error`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tiercache_proto::v1::{self, pipeline_request::Operation, pipeline_response};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::MessageSizes;
use crate::error::{Error, Result};
use crate::transport::{Meta, Svc};

type Reply = std::result::Result<pipeline_response::Result, Status>;

/// Requests that may be queued for the stream before senders wait.
const QUEUE: usize = 1024;

#[derive(Debug)]
pub(crate) struct Pipeline {
    channel: Channel,
    meta: Meta,
    sizes: MessageSizes,
    next_id: AtomicU64,
    /// The open stream, if any. An async mutex so that concurrent first requests open one
    /// stream, not one each.
    conn: tokio::sync::Mutex<Option<Conn>>,
}

#[derive(Debug, Clone)]
struct Conn {
    /// Dropping the last sender ends the outbound stream, which ends the reader task.
    tx: mpsc::Sender<v1::PipelineRequest>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    closed: AtomicBool,
}

impl Shared {
    fn fail_all(&self, why: &str) {
        self.closed.store(true, Ordering::SeqCst);
        let pending = std::mem::take(&mut *self.pending.lock());
        for (_, tx) in pending {
            let _ = tx.send(Err(Status::unavailable(why.to_string())));
        }
    }
}

impl Pipeline {
    pub(crate) fn new(channel: Channel, meta: Meta, sizes: MessageSizes) -> Self {
        Self {
            channel,
            meta,
            sizes,
            next_id: AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends one operation and waits for its answer, all of it (waiting for another caller
    /// to open the stream, opening it, queueing, the answer) within `timeout`.
    pub(crate) async fn call(
        &self,
        op: Operation,
        timeout: Option<Duration>,
    ) -> Result<pipeline_response::Result> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let conn = within(
            deadline,
            self.conn(),
            "opening the pipeline stream timed out",
        )
        .await??;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.shared.pending.lock().insert(id, tx);
        // The reader may have failed everything just before the insert: then nobody will
        // complete this one.
        if conn.shared.closed.load(Ordering::SeqCst) {
            conn.shared.pending.lock().remove(&id);
            return Err(Error::unavailable("pipeline stream closed"));
        }
        let req = v1::PipelineRequest {
            id,
            operation: Some(op),
        };
        let sent = within(deadline, conn.tx.send(req), "request timeout elapsed").await;
        if !matches!(sent, Ok(Ok(()))) {
            conn.shared.pending.lock().remove(&id);
            return Err(sent
                .err()
                .unwrap_or_else(|| Error::unavailable("pipeline stream closed")));
        }
        let reply = match within(deadline, rx, "request timeout elapsed").await {
            Ok(r) => r,
            Err(e) => {
                conn.shared.pending.lock().remove(&id);
                return Err(e);
            }
        };
        match reply {
            Ok(Ok(pipeline_response::Result::Error(e))) => Err(Error::from(status_of(e))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(status)) => Err(Error::from(status)),
            Err(_) => Err(Error::unavailable("pipeline stream closed")),
        }
    }

    /// Returns the open stream, opening one when there is none or the last one closed.
    async fn conn(&self) -> Result<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.shared.closed.load(Ordering::SeqCst) && !c.tx.is_closed() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut client: tiercache_proto::v1::cache_service_client::CacheServiceClient<Svc> =
            self.sizes.cache(
                tiercache_proto::v1::cache_service_client::CacheServiceClient::with_interceptor(
                    self.channel.clone(),
                    self.meta.clone(),
                ),
            );
        let resp = client.pipeline(ReceiverStream::new(rx)).await?;
        let mut inbound = resp.into_inner();
        let shared = Arc::new(Shared::default());
        let reader = Arc::clone(&shared);
        tokio::spawn(async move {
            let why = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        let tx = reader.pending.lock().remove(&msg.id);
                        if let (Some(tx), Some(result)) = (tx, msg.result) {
                            let _ = tx.send(Ok(result));
                        }
                    }
                    Ok(None) => break "pipeline stream ended".to_string(),
                    Err(status) => break format!("pipeline stream failed: {}", status.message()),
                }
            };
            tracing::debug!(reason = %why, "tiercache pipeline stream closed");
            reader.fail_all(&why);
        });
        let conn = Conn { tx, shared };
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// Runs `f` until `deadline`, failing with [`Error::DeadlineExceeded`] (`what`) after it.
async fn within<T>(deadline: Option<Instant>, f: impl Future<Output = T>, what: &str) -> Result<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| Error::deadline(what)),
        None => Ok(f.await),
    }
}

/// Rebuilds the status a unary call would have failed with from a `PipelineError`.
pub(crate) fn status_of(e: v1::PipelineError) -> Status {
    Status::with_details(Code::from(e.code), e.message, e.details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn pipeline_errors_map_like_unary_statuses() {
        let details = ErrorDetails::with_bad_request_violation("key", "must not be empty");
        let unary = Status::with_error_details(Code::InvalidArgument, "bad request", details);
        let wire = v1::PipelineError {
            code: unary.code() as i32,
            message: unary.message().to_string(),
            details: unary.details().to_vec().into(),
        };
        let (a, b) = (Error::from(status_of(wire)), Error::from(unary));
        assert_eq!(a.to_string(), b.to_string());
        assert!(matches!(
            a,
            Error::InvalidArgument { field_violations, .. } if field_violations[0].field == "key"
        ));
    }
}
