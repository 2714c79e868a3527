//! `docker compose up` for real: the stack of `docker-compose.yml` (Redis, `replica` containers, nginx) under a
//! private Docker engine. `cargo xtask stack-test` builds the images, brings the stack up and runs this test with
//! `--ignored`, telling it where the stack is; it also tears everything down afterwards.
//!
//! The stack runs scaled to three replica containers (`--scale replica=3`). Through nginx's published port:
//! connections reach all three; then, under traffic, two replica containers are stopped in turn (`docker stop`:
//! SIGTERM, drain) and started again, and the third is killed (`docker kill`). Every client moves at least once,
//! through nginx; every acked message reaches every member exactly once.

use std::collections::HashSet;
use std::process::Command;

use testkit::run_ok;
use testkit::traffic::through_one_address;

use crate::harness::{eventually, node_behind};

/// What `cargo xtask stack-test` tells the test.
struct Stack {
    /// nginx's published address, e.g. 127.0.0.1:18000.
    addr: String,
    /// The private engine's socket (`unix:///…`).
    docker_host: String,
    /// The compose project name.
    project: String,
}

impl Stack {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run this test through `cargo xtask stack-test`, which starts the stack")
            })
        };
        Self {
            addr: var("ROOMCAST_STACK_ADDR"),
            docker_host: var("ROOMCAST_STACK_DOCKER_HOST"),
            project: var("ROOMCAST_STACK_PROJECT"),
        }
    }

    fn docker(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("docker")
                .args(args)
                .env("DOCKER_HOST", &self.docker_host),
            &format!("docker {args:?}"),
        )
    }

    /// The ids of the `replica` service's containers.
    fn replicas(&self) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        self.docker(&[
            "ps",
            "-q",
            "--filter",
            &project,
            "--filter",
            "label=com.docker.compose.service=replica",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    async fn wait_healthy(&self, container: &str) {
        eventually("the restarted replica container is healthy", || async {
            let status =
                self.docker(&["inspect", "--format", "{{.State.Health.Status}}", container]);
            (status == "healthy").then_some(())
        })
        .await;
    }

    fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, shared::WS_PATH)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose stack: run by `cargo xtask stack-test` (and `cargo xtask test` where dockerd starts)"]
async fn compose_stack_chats_through_nginx_and_survives_stop_and_kill() {
    let stack = Stack::from_env();
    let url = stack.ws_url();
    let replicas = stack.replicas();
    assert_eq!(replicas.len(), 3, "the scaled service: {replicas:?}");

    // nginx picks among the addresses Docker's DNS returns (in a shuffled order), so connections spread at random:
    // within 60 of them every container has answered (the odds of missing one are about 1 in 10^10).
    let mut nodes = HashSet::new();
    for _ in 0..60 {
        nodes.insert(node_behind(&url).await);
        if nodes.len() == 3 {
            break;
        }
    }
    assert_eq!(
        nodes.len(),
        3,
        "nginx reaches every container of the scaled service: {nodes:?}"
    );

    // Every container goes down once, so every client (1 sender, 4 members) has to move at least once, wherever
    // nginx put it.
    let (first, second, third) = (&replicas[0], &replicas[1], &replicas[2]);
    let faults = async {
        // As an orchestrator stops a container: SIGTERM, the replica drains within the grace period; then it is
        // started again, one after the other.
        for container in [first, second] {
            stack.docker(&["stop", "--time", "10", container]);
            stack.docker(&["start", container]);
            stack.wait_healthy(container).await;
        }
        // Then the last one dies abruptly.
        stack.docker(&["kill", third]);
    };
    let outcome = through_one_address("compose-stop-kill", "compose", &url, faults).await;
    outcome.assert_exact();
    let moved = outcome.reconnects();
    assert!(
        moved >= 5,
        "every client moved between containers through nginx ({moved} reconnects)"
    );
    println!(
        "compose stack: the sender waited {} ms at most, while the stops, restarts and kill ran",
        outcome.sent.longest_wait.as_millis()
    );
    // The compose file's PostgreSQL archives every event the replicas acked (the killed one's included, taken over
    // by the others).
    let project = format!("label=com.docker.compose.project={}", stack.project);
    let postgres = stack.docker(&[
        "ps",
        "-q",
        "--filter",
        &project,
        "--filter",
        "label=com.docker.compose.service=postgres",
    ]);
    let acked = outcome.sent.acked.len().to_string();
    eventually("the archive holds every acked event", || async {
        let count = stack.docker(&[
            "exec",
            "-e",
            "PGPASSWORD=roomcast",
            postgres.trim(),
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "roomcast",
            "-d",
            "roomcast",
            "-tAc",
            "SELECT count(*) FROM events WHERE room = 'compose'",
        ]);
        (count.trim() == acked).then_some(())
    })
    .await;
    println!("compose stack: the archive holds all {acked} acked events");
}
