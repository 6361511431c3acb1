//! The edge: the only code that knows HTTP, JSON or protobuf. REST ([`http`]) and
//! gRPC ([`grpc`], [`modelmesh`]) are served together over one [`crate::Infer`].

pub mod compression;
pub mod grpc;
pub mod http;
pub mod modelmesh;
pub mod types;
