//! The command line: flags (clap lives here and only here), and which subcommand runs.
//! Each subcommand is a module of its own; the settings each one reads are loaded here,
//! once, from the same layers (file < environment < flags).
//!
//! Flags may stand before the subcommand (`snowplow-relay --redis-url URL check`) or
//! after it (`snowplow-relay check --redis-url URL`); each subcommand lists only the
//! flags it uses.
//!
//! It may touch everything in the library; the library never imports it.

mod check;
mod collector;
mod dead_letter;
mod healthcheck;
mod prepare_rollback;
mod run;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use snowplow_relay::config::{Overrides, Settings, ToolSettings, key};

/// Relays Snowplow events from a Redis list to a Snowplow collector, at least once.
///
/// Settings come from the TOML file (--config, or SNOWPLOW_RELAY_CONFIG), then
/// SNOWPLOW_RELAY_<SECTION>__<KEY> environment variables, then these flags, each
/// overriding the one before. Exit codes: 0 stopped cleanly, 1 failed while running,
/// 2 invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "snowplow-relay", version = snowplow_relay::VERSION_AND_COMMIT)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    relay: RelayFlags,
}

/// The file and the log.
#[derive(Debug, Clone, Default, Args)]
struct CommonFlags {
    /// TOML configuration file (see config/snowplow-relay.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// error, warn, info, debug, trace or a filter directive (log.level).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json (log.format).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// Where the list is.
#[derive(Debug, Clone, Default, Args)]
struct RedisFlags {
    /// Redis URL (redis.url), e.g. redis://127.0.0.1:6379/0. Give a password in
    /// redis.password_file or SNOWPLOW_RELAY_REDIS__PASSWORD, not here: every user of the
    /// host can read a process's flags.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The Redis list to relay (redis.key).
    #[arg(long, value_name = "NAME")]
    key: Option<String>,
}

/// Where events go.
#[derive(Debug, Clone, Default, Args)]
struct CollectorFlags {
    /// Collector URL (collector.url), e.g. https://collector.example.com.
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
    /// get: one event per request; post: batches (collector.method).
    #[arg(long, value_name = "get|post")]
    method: Option<String>,
    /// Events per POST request (collector.buffer_size).
    #[arg(long, value_name = "N")]
    buffer_size: Option<String>,
    /// Largest POST body or GET URL in bytes (collector.byte_limit).
    #[arg(long, value_name = "BYTES")]
    byte_limit: Option<String>,
}

/// The admin listener.
#[derive(Debug, Clone, Default, Args)]
struct AdminFlags {
    /// Serve /metrics, /healthz and /readyz on ADDR, e.g. 127.0.0.1:9187 (admin.listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

/// Everything the relay reads.
#[derive(Debug, Clone, Default, Args)]
struct RelayFlags {
    #[command(flatten)]
    common: CommonFlags,
    #[command(flatten)]
    redis: RedisFlags,
    #[command(flatten)]
    collector: CollectorFlags,
    #[command(flatten)]
    admin: AdminFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay events until SIGINT, SIGTERM or SIGQUIT (the default).
    Run(RelayFlags),
    /// Validate the configuration; print warnings, and the settings with secrets masked
    /// and where each value came from.
    Check {
        #[command(flatten)]
        flags: RelayFlags,
        /// Print errors and warnings only (for ExecStartPre= and ExecReload=).
        #[arg(long, short)]
        quiet: bool,
        /// Then connect: to Redis (authenticate, check permissions and key types, read
        /// the eviction policy, reply limit and memory where allowed) and to the
        /// collector (GET /health). Exit 2 if that proves the configuration wrong, 1 if
        /// either cannot be reached.
        #[arg(long)]
        connect: bool,
        /// Print the documented example configuration, every key with its default
        /// (config/snowplow-relay.toml), and nothing else.
        #[arg(long, exclusive = true)]
        print_default_config: bool,
    },
    /// Probe the running relay's /healthz on admin.listen (for container health checks):
    /// exit 0 if alive, 1 otherwise.
    Healthcheck {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        admin: AdminFlags,
        /// Probe /readyz instead (ready to relay).
        #[arg(long)]
        ready: bool,
    },
    /// Inspect the dead-letter list, or move its entries back to the list once the cause
    /// is fixed.
    #[command(mut_args = |arg: clap::Arg| arg.global(true))]
    DeadLetter {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        redis: RedisFlags,
        #[command(subcommand)]
        action: dead_letter::Action,
    },
    /// Before starting an older build on this list (a rollback): return every stopped
    /// relay's held events to the list and remove the key layout version. Refuses while a
    /// relay still runs on the list (docs/operations.md#upgrading). Exit 0 when ready.
    PrepareRollback {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        redis: RedisFlags,
    },
    /// Track events from the shell: into Redis (the [redis] settings), or straight to a
    /// collector with --collector URL. Prints each event id.
    #[command(mut_args = |arg: clap::Arg| arg.global(true))]
    Track(Box<track::TrackArgs>),
    /// Run a local collector shaped like Snowplow Micro, for trials and tests: GET /i,
    /// POST /com.snowplowanalytics.snowplow/tp2, /micro/all|good|bad|reset, /health.
    Collector(collector::CollectorArgs),
}

/// A flag group's `or` (these flags, with `before`, given ahead of the subcommand,
/// where these are unset) and `add_to` (its flags as overrides of their keys).
macro_rules! flag_group {
    ($group:ident { $($field:ident),* } sets { $($key:ident $flag:literal $set:ident),* }) => {
        impl $group {
            fn or(self, before: &$group) -> $group {
                $group {
                    $($field: self.$field.or_else(|| before.$field.clone()),)*
                }
            }

            fn add_to(&self, overrides: &mut Overrides) {
                $(overrides.set_flag(key::$key, $flag, self.$set.as_ref());)*
            }
        }
    };
}

flag_group!(CommonFlags { config, log_level, log_format } sets {
    LOG_LEVEL "--log-level" log_level,
    LOG_FORMAT "--log-format" log_format
});
flag_group!(RedisFlags { redis_url, key } sets {
    REDIS_URL "--redis-url" redis_url,
    REDIS_KEY "--key" key
});
flag_group!(CollectorFlags { collector, method, buffer_size, byte_limit } sets {
    COLLECTOR_URL "--collector" collector,
    COLLECTOR_METHOD "--method" method,
    COLLECTOR_BUFFER_SIZE "--buffer-size" buffer_size,
    COLLECTOR_BYTE_LIMIT "--byte-limit" byte_limit
});
flag_group!(AdminFlags { admin_listen } sets {
    ADMIN_LISTEN "--admin-listen" admin_listen
});

impl RelayFlags {
    /// These flags, with `before` (given ahead of the subcommand) where these are unset.
    fn or(self, before: &RelayFlags) -> RelayFlags {
        RelayFlags {
            common: self.common.or(&before.common),
            redis: self.redis.or(&before.redis),
            collector: self.collector.or(&before.collector),
            admin: self.admin.or(&before.admin),
        }
    }

    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::default();
        self.common.add_to(&mut overrides);
        self.redis.add_to(&mut overrides);
        self.collector.add_to(&mut overrides);
        self.admin.add_to(&mut overrides);
        overrides
    }

    /// The relay's settings; exit code 2 with the reason when they are invalid.
    fn settings(&self) -> Result<Settings, ExitCode> {
        Settings::load(self.common.config.as_deref(), &self.overrides(), None).map_err(refused)
    }

    /// The settings of a tool that needs no collector.
    fn tool_settings(&self) -> Result<ToolSettings, ExitCode> {
        ToolSettings::load(self.common.config.as_deref(), &self.overrides()).map_err(refused)
    }
}

fn refused(error: snowplow_relay::config::ConfigError) -> ExitCode {
    eprintln!("snowplow-relay: {error}");
    ExitCode::from(2)
}

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    keep_secrets_out_of_core_dumps();
    let cli = Cli::parse();
    // One crypto provider (ring) for every TLS connection, Redis and collector alike,
    // installed before any subcommand opens one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let before = cli.relay;
    match cli.command {
        None => run::run(before),
        Some(Command::Run(flags)) => run::run(flags.or(&before)),
        Some(Command::Check {
            print_default_config: true,
            ..
        }) => check::print_default_config(),
        Some(Command::Check {
            flags,
            quiet,
            connect,
            ..
        }) => check::check(flags.or(&before), quiet, connect),
        Some(Command::Healthcheck {
            common,
            admin,
            ready,
        }) => {
            let flags = RelayFlags {
                common,
                admin,
                ..RelayFlags::default()
            };
            healthcheck::healthcheck(flags.or(&before), ready)
        }
        Some(Command::DeadLetter {
            common,
            redis,
            action,
        }) => {
            let flags = RelayFlags {
                common,
                redis,
                ..RelayFlags::default()
            };
            dead_letter::dead_letter(flags.or(&before), action)
        }
        Some(Command::PrepareRollback { common, redis }) => {
            let flags = RelayFlags {
                common,
                redis,
                ..RelayFlags::default()
            };
            prepare_rollback::prepare_rollback(flags.or(&before))
        }
        Some(Command::Track(args)) => track::track(*args, &before),
        Some(Command::Collector(args)) => collector::collector(args, &before.common),
    }
}

/// The async runtime: `threads` worker threads (`worker.threads` for the relay, 1 for the
/// tools); one thread runs everything on the calling thread. Says why on stderr if it
/// cannot start.
fn runtime(threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = if threads > 1 {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|error| eprintln!("snowplow-relay: cannot start the async runtime: {error}"))
        .ok()
}

/// Marks the process non-dumpable before any secret is read: no core file is written,
/// and another process of the same user cannot read its memory (`gcore`, `/proc/PID/mem`)
/// or environment, where the Redis password and TLS keys live. (The systemd unit also
/// sets `LimitCORE=0`.)
fn keep_secrets_out_of_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes only this process's dumpable flag.
    let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if result != 0 {
        eprintln!(
            "warning: cannot mark the process non-dumpable ({}); a core dump could hold \
             secrets",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every leaf subcommand takes the flags of the subcommands it stands under, after
    /// it (`dead-letter count --redis-url URL`, `track page-view --url U --collector C`),
    /// as people type them.
    #[test]
    fn every_leaf_subcommand_takes_its_flags_after_it() {
        let mut cli = Cli::command();
        cli.build();
        let mut leaves = 0;
        let mut stack: Vec<(Vec<String>, &clap::Command, Vec<String>)> = cli
            .get_subcommands()
            .filter(|sub| sub.get_name() != "help")
            .map(|sub| (vec![sub.get_name().to_owned()], sub, Vec::new()))
            .collect();
        while let Some((path, command, inherited)) = stack.pop() {
            let own: Vec<String> = command
                .get_arguments()
                .filter_map(|arg| arg.get_long().map(str::to_owned))
                .collect();
            if command.has_subcommands() {
                let mut flags = inherited.clone();
                flags.extend(own.iter().filter(|f| *f != "help").cloned());
                for sub in command
                    .get_subcommands()
                    .filter(|sub| sub.get_name() != "help")
                {
                    let mut path = path.clone();
                    path.push(sub.get_name().to_owned());
                    stack.push((path, sub, flags.clone()));
                }
                continue;
            }
            leaves += 1;
            for flag in &inherited {
                assert!(
                    own.contains(flag),
                    "`snowplow-relay {} --{flag}` is refused",
                    path.join(" ")
                );
            }
            // And parsing says so: the flag after the leaf reaches the same setting.
            if inherited.iter().any(|f| f == "redis-url") {
                let mut args = vec!["snowplow-relay".to_owned()];
                args.extend(path.iter().cloned());
                args.extend(required_args(&path));
                args.extend(["--redis-url".to_owned(), "redis://h:1".to_owned()]);
                Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            }
        }
        assert!(leaves >= 20, "{leaves} leaves");
    }

    /// What a leaf needs to parse at all (a page view needs its URL, …).
    fn required_args(path: &[String]) -> Vec<String> {
        let mut cli = Cli::command();
        cli.build();
        let mut command = &cli;
        for name in path {
            command = command.find_subcommand(name).expect("a subcommand");
        }
        command
            .get_arguments()
            .filter(|arg| arg.is_required_set())
            .flat_map(|arg| {
                let value = arg
                    .get_possible_values()
                    .first()
                    .map_or("1".to_owned(), |v| v.get_name().to_owned());
                [format!("--{}", arg.get_long().unwrap_or_default()), value]
            })
            .collect()
    }

    /// Each flag sets a declared key (the flag groups name keys by their `key::`
    /// constant, which the declaration generates; this proves each flag is wired).
    #[test]
    fn each_flag_names_a_declared_key() {
        let cli = Cli::try_parse_from([
            "snowplow-relay",
            "--config",
            "f.toml",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--redis-url",
            "redis://h:1",
            "--key",
            "k",
            "--collector",
            "http://c",
            "--method",
            "get",
            "--buffer-size",
            "1",
            "--byte-limit",
            "100",
            "--admin-listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        let overrides = cli.relay.overrides();
        let flags: Vec<&str> = overrides.values.iter().map(|(_, flag, _)| *flag).collect();
        let root = Cli::command();
        let declared_flags: Vec<String> = root
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(|l| format!("--{l}")))
            .filter(|flag| flag != "--config" && flag != "--help" && flag != "--version")
            .collect();
        assert_eq!(
            flags.len(),
            declared_flags.len(),
            "{flags:?} {declared_flags:?}"
        );
        for (key, flag, _) in &overrides.values {
            assert!(
                snowplow_relay::config::keys::KEYS
                    .iter()
                    .any(|k| k.path == *key),
                "{flag} sets {key}, which is not declared"
            );
        }
    }
}
