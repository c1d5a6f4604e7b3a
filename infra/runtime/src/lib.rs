//! ferrite-runtime: the distributed plumbing every Ferrite process shares — `Discovery`
//! (etcd with leases, or in-memory), `Bus` (NATS, or in-memory) and sequenced response streams.

pub mod bus;
pub mod discovery;
pub mod env_names;
pub mod error;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
mod util;

pub use bus::{Bus, BusMessage, MemBus, NatsBus, subject_matches};
pub use discovery::{DEFAULT_TTL, Discovery, DiscoveryEvent, EtcdDiscovery, MemDiscovery};
pub use error::{Result, RuntimeError, StreamError};
pub use stream::{
    HEARTBEAT_INTERVAL, IncomingRequest, RequestStream, ResponseStream, StreamOptions,
    StreamResponder, request_stream, serve_requests,
};
