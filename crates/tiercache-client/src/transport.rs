//! What every call and stream on the channel carries: the [`Meta`] interceptor and the
//! [`Svc`] it wraps around the channel. Below both `client` (unary calls) and `pipeline` (the
//! multiplexed stream), so neither needs the other for it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The channel with this client's metadata interceptor in front.
pub(crate) type Svc = InterceptedService<Channel, Meta>;

/// Adds this client's metadata to every call and stream: `authorization: Bearer …` when a token
/// is set, and (feature `otel`) the W3C `traceparent` of the current span. Interceptors run
/// when the call is made, in the caller's task, so "current span" is the caller's. Pipelined
/// requests share one stream, so they carry the trace context of the call that opened it.
#[derive(Clone, Default)]
pub(crate) struct Meta {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Meta {
    /// Returns the metadata for `bearer_token`; a token that is not visible ASCII is left out
    /// (the builder refuses it before it gets here).
    pub(crate) fn new(bearer_token: Option<&str>) -> Self {
        Self {
            authorization: bearer_token.and_then(|t| authorization(t).ok()),
        }
    }
}

/// Returns the `authorization` header value for a bearer token, or an error when the token
/// cannot be sent as metadata.
pub(crate) fn authorization(
    token: &str,
) -> Result<MetadataValue<Ascii>, tonic::metadata::errors::InvalidMetadataValue> {
    MetadataValue::try_from(format!("Bearer {token}").as_str())
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Meta")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Interceptor for Meta {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        #[cfg(feature = "otel")]
        crate::otel::inject(req.metadata_mut());
        Ok(req)
    }
}
