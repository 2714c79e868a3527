//! Fault runs: steady traffic from clients that behave like the browser client (resend unacked messages with the
//! same cid, reconnect to any replica, resume with `since` + `epoch`) while a test breaks something, and the exact
//! counts of what every member received. Built on the one typed [`Client`].

use std::collections::HashSet;
use std::time::Duration;

use shared::{ClientMsg, ErrorCode, MsgId, ServerMsg, close_code, frame};
use tokio::sync::watch;

use crate::PATIENCE;
use crate::client::{Client, Joined, Received};

/// Pause between two sends of the steady sender (~200 messages/s).
const SEND_EVERY: Duration = Duration::from_millis(5);

/// Connects to the first replica of `urls` (starting at `*next`, rotating) that accepts, reads its welcome.
async fn connect_any(urls: &[String], next: &mut usize) -> Client {
    let give_up = crate::GiveUp::after_recovery();
    loop {
        give_up.check(&format!("no replica of {urls:?} accepted a connection"));
        let url = &urls[*next % urls.len()];
        *next += 1;
        if let Some(client) = Client::try_connect(url).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Where a member stands in a room: what a client keeps to resume.
#[derive(Debug, Default, Clone)]
struct Resume {
    since: Option<MsgId>,
    epoch: Option<String>,
}

impl Resume {
    /// Joins `room` from here (retrying while the store is unavailable); `None` if the connection closed meanwhile.
    async fn join(&self, client: &mut Client, room: &str, nick: &str) -> Option<Joined> {
        client
            .join_resuming(room, nick, self.since, self.epoch.clone())
            .await
    }
}

/// What a member saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub ids: Vec<MsgId>,
    /// Who wrote each of `ids`, in the same order: after a split brain, two masters may give two events one id, and
    /// the author tells them apart.
    pub authors: Vec<String>,
    pub gaps: usize,
    pub resets: usize,
    pub reconnects: usize,
    pub closes_1013: usize,
    /// With read traffic: the read positions `read_state` frames told this member, in arrival order (its own
    /// answers and the moves relayed from its person's other connection).
    pub read_states: Vec<MsgId>,
    /// `read` requests sent.
    pub reads_sent: usize,
    /// `read` requests refused (`unavailable` during a fault); a later one covers them.
    pub reads_refused: usize,
}

/// How often a reading member marks what it received as read: every this many events.
const READ_EVERY: usize = 5;

/// The nick of member `i`: with read traffic, members pair up as one person (the nick is the person without tokens).
fn member_nick(i: usize, reads: bool) -> String {
    if reads {
        format!("reader{}", i % 2)
    } else {
        format!("member{i}")
    }
}

/// A member that reads everything in `room`, reconnects (to any replica) and resumes whenever its connection ends,
/// and stops once it has seen `last`. While the sender is still sending, silence is no reason to stop (a fault may
/// hold the sender up for as long as it takes); once `last` is known, a member that hears nothing for
/// 3 × [`PATIENCE`] stops, and the counts then show what it missed.
async fn member(
    urls: Vec<String>,
    first: usize,
    room: &'static str,
    nick: String,
    mut last: watch::Receiver<Option<MsgId>>,
    joined: tokio::sync::mpsc::Sender<()>,
    reads: bool,
) -> Seen {
    let mut next = first;
    let mut seen = Seen::default();
    let mut resume = Resume::default();
    let mut announced = false;
    'connection: loop {
        let mut client = connect_any(&urls, &mut next).await;
        let Some(Joined {
            history,
            epoch,
            reset,
            truncated,
        }) = resume.join(&mut client, room, &nick).await
        else {
            seen.reconnects += 1;
            continue;
        };
        seen.resets += usize::from(reset);
        seen.gaps += usize::from(truncated);
        resume.epoch = Some(epoch);
        for m in history {
            resume.since = Some(m.id);
            seen.ids.push(m.id);
            seen.authors.push(m.nick.to_string());
        }
        if reads && let Some(id) = resume.since {
            seen.reads_sent += usize::from(client.try_send(&read(room, id)).await);
        }
        if !announced {
            announced = true;
            let _ = joined.send(()).await;
        }
        loop {
            let end = *last.borrow_and_update();
            if let Some(end) = end
                && resume.since >= Some(end)
            {
                if reads && !read_to_the_end(&mut client, room, end, &mut seen).await {
                    seen.reconnects += 1;
                    continue 'connection;
                }
                return seen;
            }
            tokio::select! {
                r = client.next_within(PATIENCE * 3) => match r {
                    Received::Frame(frame @ (ServerMsg::Message(_)
                        | ServerMsg::Edited(_)
                        | ServerMsg::Deleted(_)
                        | ServerMsg::Reacted(_))) => {
                        // Messages and the actions on them are events of the room alike: each arrives once, in
                        // id order, and moves the resume point.
                        let id = event_id(&frame);
                        resume.since = Some(id);
                        seen.ids.push(id);
                        seen.authors.push(event_author(&frame));
                        if reads && seen.ids.len() % READ_EVERY == 0 {
                            seen.reads_sent += usize::from(client.try_send(&read(room, id)).await);
                        }
                    }
                    Received::Frame(ServerMsg::ReadState(state)) => seen.read_states.push(state.id),
                    Received::Frame(ServerMsg::Error(frame::Error { request: Some(r), .. }))
                        if r == "read" => seen.reads_refused += 1,
                    Received::Frame(ServerMsg::Gap(frame::Gap { epoch, reset, .. })) => {
                        seen.gaps += 1;
                        seen.resets += usize::from(reset);
                        resume.epoch = Some(epoch);
                    }
                    Received::Frame(_) => {}
                    Received::Closed(code) => {
                        seen.reconnects += 1;
                        seen.closes_1013 += usize::from(code == Some(close_code::TRY_AGAIN_LATER));
                        continue 'connection;
                    }
                    Received::Silent if last.borrow().is_some() => return seen,
                    Received::Silent => {}
                },
                _ = last.changed() => {}
            }
        }
    }
}

/// A `read` of `room` up to `id`.
fn read(room: &str, id: MsgId) -> ClientMsg {
    ClientMsg::Read {
        room: room.into(),
        id,
    }
}

/// Reads up to `end` and waits until a `read_state` says the position is there (asking again after a refusal or a
/// silence); `false` if the connection closed meanwhile.
async fn read_to_the_end(client: &mut Client, room: &str, end: MsgId, seen: &mut Seen) -> bool {
    let give_up = crate::GiveUp::after_recovery();
    loop {
        give_up.check("a read up to the last message was never answered");
        if !client.try_send(&read(room, end)).await {
            return false;
        }
        seen.reads_sent += 1;
        loop {
            match client.next_within(PATIENCE).await {
                Received::Frame(ServerMsg::ReadState(state)) => {
                    seen.read_states.push(state.id);
                    if state.id >= end {
                        return true;
                    }
                }
                Received::Frame(ServerMsg::Error(frame::Error {
                    request: Some(r), ..
                })) if r == "read" => {
                    seen.reads_refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                Received::Frame(_) => {}
                Received::Closed(_) => return false,
                Received::Silent => break,
            }
        }
    }
}

/// The id of a stored event's frame.
fn event_id(frame: &ServerMsg) -> MsgId {
    match frame {
        ServerMsg::Message(m) => m.id,
        ServerMsg::Edited(frame::Edited { id, .. })
        | ServerMsg::Deleted(frame::Deleted { id, .. })
        | ServerMsg::Reacted(frame::Reacted { id, .. }) => *id,
        other => unreachable!("not an event: {other:?}"),
    }
}

/// Who wrote a stored event's frame.
fn event_author(frame: &ServerMsg) -> String {
    match frame {
        ServerMsg::Message(m) => m.nick.to_string(),
        ServerMsg::Edited(frame::Edited { nick, .. })
        | ServerMsg::Deleted(frame::Deleted { nick, .. })
        | ServerMsg::Reacted(frame::Reacted { nick, .. }) => nick.to_string(),
        other => unreachable!("not an event: {other:?}"),
    }
}

impl Seen {
    /// Forgets the event `id` (a marker that is not part of the counts).
    fn forget(&mut self, id: MsgId) {
        let (ids, authors) = self
            .ids
            .iter()
            .zip(&self.authors)
            .filter(|(i, _)| **i != id)
            .map(|(i, a)| (*i, a.clone()))
            .unzip();
        (self.ids, self.authors) = (ids, authors);
    }
}

/// What the sender did.
#[derive(Debug, Default)]
pub struct Sent {
    /// The nick it sent as.
    pub nick: String,
    /// Events it meant to store (distinct cids): messages, and edits and reactions of its own messages.
    pub sent: usize,
    /// How many of those were actions (edits, reactions).
    pub actions: usize,
    /// The id each one was acked with, in order.
    pub acked: Vec<MsgId>,
    /// When each of those acks arrived, in the same order.
    pub acked_at: Vec<tokio::time::Instant>,
    /// `unavailable` answers (each followed by a resend with the same cid).
    pub unavailable: usize,
    /// Acks that said `duplicate` (a resend of something already stored).
    pub duplicate_acks: usize,
    /// Times the sender lost its connection and reconnected.
    pub reconnects: usize,
    /// The longest time between two consecutive acks: how long sending was impossible during the fault.
    pub longest_wait: Duration,
    /// The messages of actions refused with `message_gone`: acked, then lost with the writes the fault took (a
    /// Redis master killed before it replicated them). Never when no acked write can be lost.
    pub gone: Vec<MsgId>,
}

/// Sends `count` messages one after another, each until it is acked: on `unavailable` or a lost connection it
/// resends the same cid (after reconnecting to any replica), as the browser client does. Every third message is
/// then edited, and every third (another) gets a reaction, each an event with its own cid, resent the same way.
/// `fault` runs once, just after message `fault_at` is acked.
async fn send_steadily<F: Future<Output = ()>>(
    urls: &[String],
    room: &str,
    plan: Plan,
    fault_at: usize,
    fault: F,
) -> Sent {
    let Plan {
        nick,
        count,
        mut stop,
        every,
    } = plan;
    let mut fault = Some(fault);
    let mut next = 0;
    let mut out = Sent {
        nick: nick.clone(),
        ..Sent::default()
    };
    let mut client = connect_any(urls, &mut next).await;
    let resume = Resume::default();
    while resume.join(&mut client, room, &nick).await.is_none() {
        client = connect_any(urls, &mut next).await;
    }
    let mut last_ack = tokio::time::Instant::now();
    for i in 0.. {
        if i >= count && stop.as_mut().is_none_or(|stop| *stop.borrow_and_update()) {
            break;
        }
        let mut requests = vec![(
            format!("m{i}"),
            ClientMsg::Send {
                room: room.into(),
                text: format!("message {i}"),
                cid: format!("m{i}"),
                reply_to: None,
            },
        )];
        let mut target = None;
        let mut k = 0;
        while k < requests.len() {
            let (cid, send) = requests[k].clone();
            k += 1;
            out.sent += 1;
            let first_try = tokio::time::Instant::now();
            'resend: loop {
                assert!(
                    first_try.elapsed() < PATIENCE * 6,
                    "{cid} was not acked within {:?} of resending",
                    PATIENCE * 6
                );
                if client.try_send(&send).await {
                    loop {
                        match client.next_within(PATIENCE).await {
                            Received::Frame(ServerMsg::Ack(frame::Ack {
                                cid: c,
                                id,
                                duplicate,
                                ..
                            })) if c == cid => {
                                out.duplicate_acks += usize::from(duplicate);
                                out.acked.push(id);
                                out.acked_at.push(tokio::time::Instant::now());
                                target.get_or_insert(id);
                                out.longest_wait = out.longest_wait.max(last_ack.elapsed());
                                last_ack = tokio::time::Instant::now();
                                break 'resend;
                            }
                            Received::Frame(ServerMsg::Error(frame::Error {
                                code: ErrorCode::Unavailable,
                                req: Some(c),
                                ..
                            })) if c == cid => {
                                out.unavailable += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue 'resend;
                            }
                            // The edited or reacted message was acked, then lost with the failed master.
                            Received::Frame(ServerMsg::Error(frame::Error {
                                code: ErrorCode::MessageGone,
                                req: Some(c),
                                ..
                            })) if c == cid && k > 1 => {
                                out.gone.extend(target);
                                break 'resend;
                            }
                            Received::Frame(ServerMsg::Error(frame::Error {
                                code,
                                message,
                                ..
                            })) => {
                                panic!("{cid} refused: {code:?} {message}")
                            }
                            Received::Frame(_) => {}
                            Received::Closed(_) | Received::Silent => break,
                        }
                    }
                }
                // The connection is gone: reconnect anywhere, rejoin, resend the same cid.
                out.reconnects += 1;
                loop {
                    client = connect_any(urls, &mut next).await;
                    if resume.join(&mut client, room, &nick).await.is_some() {
                        break;
                    }
                }
            }
            if k == 1 {
                let target = target.expect("the message was acked");
                let action = match i % 3 {
                    1 => Some(ClientMsg::Edit {
                        room: room.into(),
                        id: target,
                        text: format!("message {i} (edited)"),
                        cid: format!("e{i}"),
                    }),
                    2 => Some(ClientMsg::React {
                        room: room.into(),
                        id: target,
                        emoji: "👍".into(),
                        on: true,
                        cid: format!("r{i}"),
                    }),
                    _ => None,
                };
                if let Some(action) = action {
                    let cid = match &action {
                        ClientMsg::Edit { cid, .. } | ClientMsg::React { cid, .. } => cid.clone(),
                        _ => unreachable!(),
                    };
                    out.actions += 1;
                    requests.push((cid, action));
                }
            }
        }
        if i == fault_at
            && let Some(fault) = fault.take()
        {
            fault.await;
        }
        tokio::time::sleep(every).await;
    }
    out
}

/// What one sender does: send as `nick`, `count` messages at least, one every `every`; with `stop`, go on until it
/// says `true`.
struct Plan {
    nick: String,
    count: usize,
    stop: Option<watch::Receiver<bool>>,
    every: Duration,
}

impl Plan {
    /// The steady sender of a fault run: `count` messages, one every [`SEND_EVERY`].
    fn steady(count: usize) -> Self {
        Self {
            nick: "sender".into(),
            count,
            stop: None,
            every: SEND_EVERY,
        }
    }
}

/// The counts of one fault run, checked exactly and printed on one line.
#[derive(Debug)]
pub struct Outcome {
    pub name: &'static str,
    pub room: &'static str,
    pub sent: Sent,
    pub members: Vec<Seen>,
    /// The members sent read traffic ([`run_traffic_reading`]).
    pub reads: bool,
}

impl Outcome {
    /// Prints the counts; returns (lost, duplicated) over all members.
    pub fn report(&self) -> (usize, usize) {
        let acked: HashSet<MsgId> = self.sent.acked.iter().copied().collect();
        let mut lost = 0;
        let mut duplicated = 0;
        let mut delivered = Vec::new();
        for seen in &self.members {
            let unique: HashSet<MsgId> = seen.ids.iter().copied().collect();
            duplicated += seen.ids.len() - unique.len();
            lost += acked.difference(&unique).count();
            let strangers: Vec<&MsgId> = unique.difference(&acked).collect();
            assert!(
                strangers.is_empty(),
                "{}: a member received ids that were never acked: {strangers:?} (acked: {:?})",
                self.name,
                self.sent.acked
            );
            delivered.push(seen.ids.len());
        }
        println!(
            "fault={} sent={} (actions {}) acked={} actions_on_lost_messages={} delivered_per_member={:?} lost={} \
             duplicated={} unavailable_answers={} duplicate_acks={} sender_reconnects={} member_reconnects={:?} \
             gaps={:?} resets={:?} longest_wait_between_acks_ms={}",
            self.name,
            self.sent.sent,
            self.sent.actions,
            acked.len(),
            self.sent.gone.len(),
            delivered,
            lost,
            duplicated,
            self.sent.unavailable,
            self.sent.duplicate_acks,
            self.sent.reconnects,
            self.members
                .iter()
                .map(|m| m.reconnects)
                .collect::<Vec<_>>(),
            self.members.iter().map(|m| m.gaps).collect::<Vec<_>>(),
            self.members.iter().map(|m| m.resets).collect::<Vec<_>>(),
            self.sent.longest_wait.as_millis(),
        );
        (lost, duplicated)
    }

    /// With read traffic, after [`Outcome::assert_exact`]: every connection saw its person's read position only move
    /// forward and end at the last event; a fresh connection of each reading person (through `url`) is told that
    /// position with nothing unread; and `counter`, who read before the traffic and stayed away, is told exactly
    /// the number of messages acked since (actions and the sender's own do not count; nothing mentions it).
    pub async fn assert_reads(&self, url: &str) {
        assert!(self.reads, "{}: no read traffic to check", self.name);
        let last = *self.sent.acked.last().expect("something was acked");
        for (i, seen) in self.members.iter().enumerate() {
            assert!(
                seen.read_states.windows(2).all(|w| w[0] <= w[1]),
                "{}: member {i}'s read position moved back: {:?}",
                self.name,
                seen.read_states
            );
            assert_eq!(
                seen.read_states.last(),
                Some(&last),
                "{}: member {i} ends at the last event",
                self.name
            );
        }
        let people = self.members.len().min(2);
        for person in 0..people {
            let mut fresh = Client::connect(url).await;
            let joined = fresh
                .join_frame(self.room, &member_nick(person, true), None)
                .await;
            assert_eq!(
                (joined.read, joined.unread, joined.mentions),
                (Some(last), 0, 0),
                "{}: reader{person}'s read state after the fault",
                self.name
            );
        }
        let messages = self.sent.acked.len() - self.sent.actions;
        let mut counter = Client::connect(url).await;
        let joined = counter.join_frame(self.room, "counter", None).await;
        println!(
            "reads fault={} reads_sent={:?} reads_refused={:?} read_states_per_member={:?} counter_unread={} of {messages} acked messages",
            self.name,
            self.members
                .iter()
                .map(|m| m.reads_sent)
                .collect::<Vec<_>>(),
            self.members
                .iter()
                .map(|m| m.reads_refused)
                .collect::<Vec<_>>(),
            self.members
                .iter()
                .map(|m| m.read_states.len())
                .collect::<Vec<_>>(),
            joined.unread,
        );
        assert_eq!(
            (joined.unread, joined.mentions, joined.more),
            (u32::try_from(messages).unwrap(), 0, false),
            "{}: counter's exact counts after the fault",
            self.name
        );
    }

    /// How many times clients (members and the sender) reconnected.
    pub fn reconnects(&self) -> usize {
        self.members.iter().map(|m| m.reconnects).sum::<usize>() + self.sent.reconnects
    }

    /// Every acked message reached every member exactly once, in id order, and nothing else arrived.
    pub fn assert_exact(&self) {
        let (lost, duplicated) = self.report();
        assert_eq!(
            self.sent.gone,
            [],
            "{}: no action found its acked message gone",
            self.name
        );
        assert_eq!(
            self.sent.acked.len(),
            self.sent.sent,
            "{}: every message is acked",
            self.name
        );
        assert_eq!(
            (lost, duplicated),
            (0, 0),
            "{}: lost, duplicated",
            self.name
        );
        for seen in &self.members {
            assert!(
                seen.ids.windows(2).all(|w| w[0] < w[1]),
                "{}: delivered in id order",
                self.name
            );
        }
    }
}

/// Runs `members` readers on the given replicas and one steady sender, with `fault` injected mid-traffic.
pub async fn run_traffic<F: Future<Output = ()>>(
    name: &'static str,
    room: &'static str,
    sender_urls: Vec<String>,
    member_urls: Vec<Vec<String>>,
    count: usize,
    fault_at: usize,
    fault: F,
) -> Outcome {
    run(
        name,
        room,
        sender_urls,
        member_urls,
        count,
        fault_at,
        fault,
        false,
    )
    .await
}

/// [`run_traffic`] with read traffic: members pair up as one person (two connections, on different replicas where
/// there are several) and mark what they receive as read every few events, and at the end up to the last one; a
/// third person, `counter`, read the room before the traffic began and stays away. [`Outcome::assert_reads`] then
/// checks the read state exactly.
pub async fn run_traffic_reading<F: Future<Output = ()>>(
    name: &'static str,
    room: &'static str,
    sender_urls: Vec<String>,
    member_urls: Vec<Vec<String>>,
    count: usize,
    fault_at: usize,
    fault: F,
) -> Outcome {
    let mut counter = Client::connect(&member_urls[0][0]).await;
    counter.join(room, "counter", None).await;
    let marker = counter.say(room, "counter was here").await;
    counter
        .read(room, marker)
        .await
        .expect("the counter's read is answered");
    drop(counter);
    let mut outcome = run(
        name,
        room,
        sender_urls,
        member_urls,
        count,
        fault_at,
        fault,
        true,
    )
    .await;
    // The counter's marker is the room's history before the traffic, not part of it.
    for member in &mut outcome.members {
        member.forget(marker);
    }
    outcome
}

/// Starts a member on each of `member_urls` and returns once all have joined: the sender of the last id they must
/// see, and their tasks.
async fn members_joined(
    room: &'static str,
    member_urls: Vec<Vec<String>>,
    reads: bool,
) -> (
    watch::Sender<Option<MsgId>>,
    Vec<tokio::task::JoinHandle<Seen>>,
) {
    let (last_tx, last_rx) = watch::channel(None);
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(member_urls.len());
    let mut readers = Vec::new();
    for (i, urls) in member_urls.into_iter().enumerate() {
        readers.push(tokio::spawn(member(
            urls,
            0,
            room,
            member_nick(i, reads),
            last_rx.clone(),
            joined_tx.clone(),
            reads,
        )));
    }
    for _ in 0..readers.len() {
        joined_rx.recv().await.expect("a member joined");
    }
    (last_tx, readers)
}

#[allow(clippy::too_many_arguments)] // The two public entry points name them; this is their common body.
async fn run<F: Future<Output = ()>>(
    name: &'static str,
    room: &'static str,
    sender_urls: Vec<String>,
    member_urls: Vec<Vec<String>>,
    count: usize,
    fault_at: usize,
    fault: F,
    reads: bool,
) -> Outcome {
    let (last_tx, readers) = members_joined(room, member_urls, reads).await;
    let sent = send_steadily(&sender_urls, room, Plan::steady(count), fault_at, fault).await;
    let _ = last_tx.send(sent.acked.last().copied());
    let mut members = Vec::new();
    for r in readers {
        members.push(r.await.expect("member task"));
    }
    Outcome {
        name,
        room,
        sent,
        members,
        reads,
    }
}

/// [`run_traffic`] with everyone — one sender, four members — going through one address (a load balancer), 300
/// messages with `fault` after the 100th.
pub async fn through_one_address<F: Future<Output = ()>>(
    name: &'static str,
    room: &'static str,
    url: &str,
    fault: F,
) -> Outcome {
    let members = vec![vec![url.to_owned()]; 4];
    run_traffic(name, room, vec![url.to_owned()], members, 300, 100, fault).await
}

/// What a run with several senders saw ([`run_during`]).
#[derive(Debug)]
pub struct Crowd {
    /// Each sender's counts, in the order of the `senders` given.
    pub senders: Vec<Sent>,
    /// Each member's, in the order given; the closing marker taken out.
    pub members: Vec<Seen>,
    /// The closing marker's id.
    pub marker: MsgId,
}

/// Several senders — sender `i` connected only to the replicas `senders[i]`, sending as `sender<i>` one message every
/// `every` (plus edits and reactions, as in [`run_traffic`]) — and members reading `room` on theirs, while `fault`
/// runs; the senders start with it and stop once it has run (each after at least a few messages), and what it
/// returns comes back with the counts. Then a last
/// message, the marker, goes in through `marker_url`, and each member stops once it has it: the marker is left out
/// of the counts.
pub async fn run_during<T, F: Future<Output = T>>(
    room: &'static str,
    senders: Vec<Vec<String>>,
    members: Vec<Vec<String>>,
    every: Duration,
    marker_url: &str,
    fault: F,
) -> (Crowd, T) {
    let (last_tx, readers) = members_joined(room, members, false).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sending = Vec::new();
    for (i, urls) in senders.into_iter().enumerate() {
        let plan = Plan {
            nick: format!("sender{i}"),
            count: 10,
            stop: Some(stop_rx.clone()),
            every,
        };
        sending.push(tokio::spawn(async move {
            send_steadily(&urls, room, plan, usize::MAX, std::future::ready(())).await
        }));
    }
    let faulted = fault.await;
    let _ = stop_tx.send(true);
    let mut senders = Vec::new();
    for s in sending {
        senders.push(s.await.expect("sender task"));
    }
    let mut closing = Client::connect(marker_url).await;
    closing.join_when_available(room, "closer").await;
    let marker = closing.say_when_available(room, "the end").await;
    let _ = last_tx.send(Some(marker));
    let mut members = Vec::new();
    for r in readers {
        let mut seen = r.await.expect("member task");
        seen.forget(marker);
        members.push(seen);
    }
    (
        Crowd {
            senders,
            members,
            marker,
        },
        faulted,
    )
}
