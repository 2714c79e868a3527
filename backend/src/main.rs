//! The `roomcast` binary: parse the config, set up logging, bind, and run one replica until SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match backend::Config::try_parse() {
        Ok(config) => config,
        // --help and --version print in full; a bad value stops with one line naming the flag and the reason.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // The first paragraph, on one line: clap names the missing flags on the lines after its first.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = first.join(" ");
            eprintln!(
                "{}",
                if line.is_empty() {
                    "invalid configuration"
                } else {
                    &line
                }
            );
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // A one-shot command prints its result; only problems are logged.
        EnvFilter::new(if config.command.is_some() {
            "warn"
        } else {
            "info"
        })
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(command) = config.command.clone() {
        if config.redis_url.is_none() {
            eprintln!(
                "error: publish, moderate, export and revoke need --redis-url (ROOMCAST_REDIS_URL): the Redis the replicas share"
            );
            return ExitCode::from(2);
        }
        let done = match command {
            backend::config::Command::Publish {
                room,
                nick,
                cid,
                text,
            } => runtime
                .block_on(backend::publish_once(&config, &room, &nick, &text, cid))
                .map(|published| {
                    let duplicate = if published.duplicate {
                        " (already stored: duplicate cid)"
                    } else {
                        ""
                    };
                    format!("{}{duplicate}", published.id)
                }),
            backend::config::Command::Moderate {
                room,
                nick,
                secs,
                days,
                on,
                by,
                cid,
                action,
            } => runtime
                .block_on(backend::moderate_once(
                    &config,
                    &room,
                    action,
                    nick.as_deref(),
                    days.map(u64::from).or(on.map(u64::from)).unwrap_or(secs),
                    &by,
                    cid,
                ))
                .map(|id| id.to_string()),
            backend::config::Command::Revoke { sub, issued_before } => runtime
                .block_on(backend::revoke_once(&config, &sub, issued_before))
                .map(|before| format!("{sub}: tokens issued before {before} revoked")),
            backend::config::Command::Export { room, since } => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let done = runtime.block_on(backend::export_once(&config, &room, since, &mut out));
                let flushed = std::io::Write::flush(&mut out);
                return match (done, flushed) {
                    (Ok(_), Ok(())) => ExitCode::SUCCESS,
                    (Err(e), _) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                    (_, Err(e)) => {
                        eprintln!("error: cannot write the output: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
        };
        return match done {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: backend::Config) -> anyhow::Result<()> {
    let addr = (config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {}:{} (in use? pick another with --port)",
            addr.0, addr.1
        )
    })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    backend::run(listener, config, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested; closing connections");
    shutdown.cancel();
}
