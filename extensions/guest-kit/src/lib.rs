//! What the Rust extensions that call a remote provider (`e2b`, `modal`) share:
//!
//! - [`http`]: a blocking client over `wasi:http/outgoing-handler`: whole answers, bodies
//!   read as they stream with a deadline, trailers (gRPC's status lives in them);
//! - [`envelope`]: the five-byte length-prefixed frames of gRPC and Connect streaming;
//! - [`cursor`]: the opaque cursor of streamed output (a byte offset per stream);
//! - [`kill`]: killing a started command and everything it started, by an id in its
//!   environment, for backends that have no kill of their own;
//! - [`clock`]: wall and monotonic time, random ids.
//!
//! Everything but [`http`] and [`clock`] is plain logic and is unit-tested natively.

pub mod clock;
pub mod cursor;
pub mod envelope;
pub mod http;
pub mod kill;
