//! Admission control and drains: a replica takes new connections and joins at a bounded rate and tells the rest
//! `try_again`; clients that honour it all get in, each exactly once. A draining replica takes no one new but keeps
//! serving its connections until each one's moment to close. Counts are exact; the rates are set so that being admitted
//! without a refusal would take the test machine many seconds of work it does in well under one.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use shared::{ClientMsg, ServerMsg, close_code, frame};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Client, Redis, Replica, config};

/// Waits what a `try_again` asks, plus up to as much again.
async fn honour(after_ms: u64, i: u64) {
    assert!(after_ms >= 100, "a wait worth a retry, not {after_ms} ms");
    tokio::time::sleep(Duration::from_millis(after_ms + (i * 37) % (after_ms + 1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_beyond_the_rate_are_told_to_come_back_and_all_get_in_once() {
    // 20 joins per second after a burst of 20; 200 members join at once. Admitting all at the first try would
    // take 9 s of refill.
    let mut c = config(None);
    c.admit_joins_per_sec = 20;
    let replica = Replica::start_with(c).await;
    let members = 200_u64;
    let mut tasks = Vec::new();
    for i in 0..members {
        let url = replica.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let nick = format!("m{i}");
            let (mut refused, mut joined) = (0_u64, 0_u64);
            loop {
                client
                    .send(&ClientMsg::Join {
                        room: "storm".into(),
                        nick: nick.clone(),
                        since: None,
                        epoch: None,
                        person: None,
                        req: Some(format!("j{i}")),
                    })
                    .await;
                let answer = client
                    .take(|m| match m {
                        ServerMsg::Joined(frame::Joined { req, .. })
                        | ServerMsg::TryAgain(frame::TryAgain { req, .. })
                            if req.as_deref() == Some(&format!("j{i}")) =>
                        {
                            Some(m.clone())
                        }
                        _ => None,
                    })
                    .await;
                match answer {
                    ServerMsg::TryAgain(frame::TryAgain {
                        after_ms,
                        request,
                        room,
                        ..
                    }) => {
                        assert_eq!(
                            (request, room.as_deref()),
                            (frame::TryAgainRequest::Join, Some("storm"))
                        );
                        refused += 1;
                        honour(after_ms, i).await;
                    }
                    _ => {
                        joined += 1;
                        break;
                    }
                }
            }
            (client, refused, joined)
        }));
    }
    let mut clients = Vec::new();
    let (mut refused, mut joined) = (0, 0);
    for task in tasks {
        let (client, r, j) = task.await.unwrap();
        refused += r;
        joined += j;
        clients.push(client);
    }
    assert_eq!(joined, members, "every member joined, each once");
    assert!(
        refused >= members - 20 - 20,
        "the excess was told to come back: {refused} refusals"
    );
    // Everyone is in the room exactly once: one message reaches each of the 200 members once.
    let mut last = Client::connect(&replica.ws_url()).await;
    let mut attempt = 0;
    loop {
        last.send(&ClientMsg::Join {
            room: "storm".into(),
            nick: "last".into(),
            since: None,
            epoch: None,
            person: None,
            req: Some("last".into()),
        })
        .await;
        match last
            .take(|m| matches!(m, ServerMsg::Joined(_) | ServerMsg::TryAgain(_)).then(|| m.clone()))
            .await
        {
            ServerMsg::TryAgain(frame::TryAgain { after_ms, .. }) => {
                attempt += 1;
                honour(after_ms, attempt).await;
            }
            ServerMsg::Joined(frame::Joined { online, .. }) => {
                assert_eq!(online, u32::try_from(members).unwrap() + 1);
                break;
            }
            _ => unreachable!(),
        }
    }
    let id = last.say("storm", "all here?").await;
    let mut seen = HashSet::new();
    for client in &mut clients {
        let m = client.message_in("storm").await;
        assert_eq!(m.id, id);
        seen.insert(m.id);
    }
    assert_eq!(seen.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_rate_get_try_again_and_close_1013() {
    // 10 connections per second after a burst of 10; 100 connect at once.
    let mut c = config(None);
    c.admit_connections_per_sec = 10;
    let replica = Replica::start_with(c).await;
    let url = replica.ws_url();
    let attempts = 100;
    let mut sockets = Vec::new();
    for _ in 0..attempts {
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        sockets.push(ws);
    }
    let (mut welcomed, mut turned_away) = (0, 0);
    let mut kept = Vec::new();
    for mut ws in sockets {
        let Some(Ok(Message::Text(first))) = ws.next().await else {
            panic!("a first frame")
        };
        match serde_json::from_str::<ServerMsg>(&first).unwrap() {
            ServerMsg::Welcome(_) => {
                welcomed += 1;
                kept.push(ws);
            }
            ServerMsg::TryAgain(frame::TryAgain {
                after_ms, request, ..
            }) => {
                assert_eq!(request, frame::TryAgainRequest::Connect);
                assert!(after_ms >= 100);
                turned_away += 1;
                let close = loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => break frame,
                        Some(Ok(_)) => {}
                        other => panic!("expected a close frame, got {other:?}"),
                    }
                };
                assert_eq!(
                    close.map(|f| u16::from(f.code)),
                    Some(close_code::TRY_AGAIN_LATER)
                );
            }
            other => panic!("expected welcome or try_again, got {other:?}"),
        }
    }
    assert_eq!(
        welcomed + turned_away,
        attempts,
        "every connection got one answer"
    );
    assert!(
        turned_away >= attempts - 10 - 20,
        "{turned_away} turned away"
    );
    // The ones taken are served as usual.
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_keeps_relaying_to_the_connections_it_still_serves() {
    let redis = Redis::start().await;
    let mut c = config(Some(&redis.url()));
    // A window far longer than the test: no connection reaches its moment to close meanwhile.
    c.drain_secs = 600;
    let draining = Replica::start_with(c).await;
    let other = Replica::start(Some(&redis.url())).await;
    let mut stays = draining.client().await;
    stays.join("drain", "stays", None).await;
    let mut talks = other.client().await;
    talks.join("drain", "talks", None).await;
    draining.begin_shutdown();
    // New connections are turned away at once with 503, and `/readyz` says why (the port stays open, so a load
    // balancer's probe reads "draining" instead of a refused connection) ...
    let addr = draining.addr;
    let (status, body) = testkit::http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        Client::try_connect(&draining.ws_url()).await.is_none(),
        "a new WebSocket is refused"
    );
    let (status, _, body) = testkit::http_request(
        addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    // ... while the one it serves still gets the room's messages, live, from the other replica.
    let id = talks.say("drain", "still there?").await;
    assert_eq!(stays.message_in("drain").await.id, id);
    let answer = talks.say("drain", "and this one").await;
    assert_eq!(stays.message_in("drain").await.id, answer);
}
