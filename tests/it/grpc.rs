//! gRPC through weir: a real tonic server and client (classification, retries, deadlines,
//! weir's own errors as gRPC).
