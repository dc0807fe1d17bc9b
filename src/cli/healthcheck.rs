//! `snowplow-relay healthcheck [--ready]`: probes the running relay's `/healthz` (or
//! `/readyz`) on `admin.listen` and exits 0 or 1: the container health check, in images
//! without curl.

use std::process::ExitCode;
use std::time::Duration;

use super::{RelayFlags, runtime};

pub(super) fn healthcheck(flags: RelayFlags, ready: bool) -> ExitCode {
    let settings = match flags.tool_settings() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let Some(addr) = settings.admin_listen else {
        eprintln!("snowplow-relay: healthcheck needs admin.listen (or --admin-listen ADDR)");
        return ExitCode::from(2);
    };
    // A relay listening on every address is probed on loopback.
    let addr = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => ([127, 0, 0, 1], addr.port()).into(),
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    let Some(runtime) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    let probe = snowplow_relay::ops::admin::probe(addr, path, Duration::from_secs(3));
    match runtime.block_on(probe) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("snowplow-relay: {path}: {why}");
            ExitCode::FAILURE
        }
    }
}
