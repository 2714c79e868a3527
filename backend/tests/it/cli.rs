//! The `roomcast` binary's start-up contract: a bad flag or environment value stops it with one line that names the
//! flag and the reason, and exit code 2.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ROOMCAST_REDIS_URL")
        .output()
        .expect("run roomcast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Flags, environment, and the flag the error must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_values_stop_with_one_line() {
    let cases: [Case; 8] = [
        (&["--redis-url", "http://x"], &[], "--redis-url"),
        (
            &[
                "--redis-url",
                "redis://127.0.0.1:1",
                "--database-url",
                "mysql://x",
            ],
            &[],
            "--database-url",
        ),
        (
            &["--redis-url", "redis://127.0.0.1:1"],
            &[("ROOMCAST_DATABASE_URL", "postgres://u@h:notaport/db")],
            "--database-url",
        ),
        (
            &["--database-url", "postgres://u:p@127.0.0.1:1/db"],
            &[],
            "--redis-url",
        ),
        (
            &[
                "--redis-url",
                "redis://127.0.0.1:1",
                "--database-url",
                "postgres://u:p@127.0.0.1:1/db",
                "--retention-days",
                "0",
            ],
            &[],
            "--retention-days",
        ),
        (&["--port", "70000"], &[], "--port"),
        (&[], &[("ROOMCAST_MAX_ROOMS", "0")], "--max-rooms"),
        (
            &["--allowed-origins", "example.com"],
            &[],
            "--allowed-origins",
        ),
    ];
    for (args, env, flag) in cases {
        let (code, stderr) = run(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line for {args:?} {env:?}: {stderr:?}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(flag),
            "{stderr}"
        );
    }
}

#[test]
fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run(&["--port", &port], &[]);
    assert_eq!(code, Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot listen on 127.0.0.1:") && last.contains("--port"),
        "{stderr}"
    );
}

/// A database that refuses the login, or that does not exist, stops the replica with one line naming PostgreSQL's
/// reason; one that does not answer yet does not stop it (events wait in Redis), and `/healthz` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_stops_the_replica_and_names_why() {
    let redis = crate::harness::Redis::start().await;
    let pg = crate::harness::Postgres::start().await;
    let wrong_password = pg
        .url()
        .replace(testkit::POSTGRES_PASSWORD, "not-the-password");
    let unknown_database = format!("{}/no_such_database", pg.url().rsplit_once('/').unwrap().0);
    for (url, reason) in [
        (&wrong_password, "password authentication failed"),
        (&unknown_database, "does not exist"),
    ] {
        let (code, stderr) = run(
            &[
                "--redis-url",
                &redis.url(),
                "--database-url",
                url,
                "--port",
                "0",
            ],
            &[],
        );
        assert_eq!(code, Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: PostgreSQL at 127.0.0.1:") && last.contains(reason),
            "{stderr}"
        );
        assert!(
            !last.contains(testkit::POSTGRES_PASSWORD),
            "no password in logs"
        );
    }
    // Nothing listening on the archive's port: the replica serves, and says the archive is down and why.
    let nobody = format!(
        "postgres://u:p@127.0.0.1:{}/db",
        crate::harness::free_port()
    );
    let replica = crate::harness::replica_process(
        &redis.url(),
        "no-archive-yet",
        &["--database-url", &nobody],
    )
    .await;
    let (status, body) = crate::harness::http_get(replica.addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let mut client = testkit::client::Client::connect(&replica.ws_url()).await;
    client.join("waiting", "alice", None).await;
    client
        .say("waiting", "kept in Redis until the archive answers")
        .await;
    crate::harness::eventually("healthz names why the archive is down", || async {
        let (_, body) = crate::harness::http_get(replica.addr, "/healthz").await;
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        let error = health["archive"]["error"].as_str()?.to_owned();
        (health["archive"]["up"] == false && error.contains("refused")).then_some(())
    })
    .await;
}
