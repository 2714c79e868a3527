//! Integration tests of a replica at its boundaries: real WebSockets, real in-process replicas, a real
//! redis-server on a private port. One binary, one module per concern.

mod actions;
mod admission;
mod api;
mod archive;
mod assets;
mod auth;
mod browser;
mod cli;
mod compose;
mod faults;
mod ha;
mod harness;
mod model;
mod ops;
mod owasp;
mod partition;
mod protocol;
mod reads;
mod redis_bus;
mod relay;
mod revoke;
mod stack;
