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
    let cases: [Case; 4] = [
        (&["--redis-url", "http://x"], &[], "--redis-url"),
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
