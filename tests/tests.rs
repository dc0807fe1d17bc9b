//! The integration tests, in one binary (one link of the dependency tree): each module
//! is one area, standing on [`support`]. Every test starts its own redis-server and
//! collector; none needs anything running beforehand.

mod support;

mod cli;
mod cluster;
mod collector_bounds;
mod docs;
mod faults;
mod fuzz_regressions;
mod hardening;
mod hostile;
mod leases;
mod permissions;
mod process;
mod producing;
mod prometheus;
mod redis_6_2;
mod relay;
mod reloads;
mod scripts;
mod sentinel;
mod stalls;
mod tls;
mod upgrades;
