//! The tiercache engine. No gRPC in here: the server crate translates.
pub mod policy;
