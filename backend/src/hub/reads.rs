//! Unread and mention counts after a read position, computed on the server from the room's history (the archive
//! beyond Redis's window), so every device of a person shows the same badge.

use shared::{MsgId, Nick, RoomName, UNREAD_COUNTED};

use super::Hub;
use crate::bus::{Body, BusError, HistoryItem, HistoryQuery};

/// Records read per history request while counting.
const COUNT_PAGE: usize = 500;

/// A room's counts after a read position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages of others after the position, not deleted.
    pub unread: u32,
    /// Of those, the ones that mention the reader.
    pub mentions: u32,
    /// More than [`UNREAD_COUNTED`]: the counts cover those only.
    pub more: bool,
    /// The newest event the counts looked at.
    pub upto: Option<MsgId>,
}

impl Counts {
    /// Counts the messages of `items` after `position` as `nick` reads them; `false` once [`UNREAD_COUNTED`] is
    /// reached (`more` set if any further message is left).
    pub fn tally(&mut self, items: &[HistoryItem], position: MsgId, nick: &Nick) -> bool {
        for item in items {
            let id = item.record.id;
            if id <= position {
                continue;
            }
            if let Body::Message {
                nick: author, text, ..
            } = &item.record.body
                && author != nick
                && !item.deleted()
            {
                if self.unread >= UNREAD_COUNTED {
                    self.more = true;
                    return false;
                }
                self.unread += 1;
                let text = item
                    .state
                    .as_ref()
                    .and_then(|s| s.text.as_deref())
                    .unwrap_or(text);
                if shared::text::mentions(text, nick.as_str()) {
                    self.mentions += 1;
                }
            }
            self.upto = self.upto.max(Some(id));
        }
        true
    }
}

/// The counts after `position` in `room` for `nick`, reading the history after it page by page (at most
/// [`UNREAD_COUNTED`] messages). `last`: the room's newest event, when known (nothing to read when the position is
/// there already).
pub async fn count(
    hub: &Hub,
    room: &RoomName,
    position: Option<MsgId>,
    last: Option<MsgId>,
    nick: &Nick,
) -> Result<Counts, BusError> {
    let mut counts = Counts {
        upto: last,
        ..Counts::default()
    };
    let Some(position) = position else {
        return Ok(counts);
    };
    if last.is_some_and(|last| last <= position) {
        return Ok(counts);
    }
    counts.upto = Some(position);
    let mut after = position;
    loop {
        let query = HistoryQuery {
            since: Some(after),
            limit: COUNT_PAGE,
            ..HistoryQuery::default()
        };
        let page = hub.bus.history(room, query).await?.items;
        if !counts.tally(&page, position, nick) {
            return Ok(counts);
        }
        match page.last() {
            Some(newest) if page.len() >= COUNT_PAGE => after = newest.record.id,
            _ => return Ok(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{MsgState, Record};

    fn item(ms: u64, nick: &str, text: &str, deleted: bool) -> HistoryItem {
        HistoryItem {
            record: Record {
                id: MsgId::new(ms, 0),
                room: RoomName::parse("r").unwrap(),
                body: Body::Message {
                    nick: Nick::parse(nick).unwrap(),
                    text: text.into(),
                    quote: None,
                },
            },
            state: deleted.then(|| MsgState {
                deleted: 1,
                ..MsgState::default()
            }),
        }
    }

    #[test]
    fn counts_skip_own_deleted_and_read_messages() {
        let me = Nick::parse("me").unwrap();
        let items = [
            item(1, "bob", "@me before", false),
            item(2, "bob", "hello @me", false),
            item(3, "me", "mine @me", false),
            item(4, "bob", "@me gone", true),
            item(5, "ann", "plain", false),
            item(6, "ann", "@Me!", false),
        ];
        let mut counts = Counts::default();
        assert!(counts.tally(&items, MsgId::new(1, 0), &me));
        assert_eq!(
            counts,
            Counts {
                unread: 3,
                mentions: 2,
                more: false,
                upto: Some(MsgId::new(6, 0)),
            }
        );
    }

    #[test]
    fn counting_stops_at_the_cap() {
        let me = Nick::parse("me").unwrap();
        let items: Vec<_> = (1..=u64::from(UNREAD_COUNTED) + 5)
            .map(|ms| item(ms, "bob", "x", false))
            .collect();
        let mut counts = Counts::default();
        assert!(!counts.tally(&items, MsgId::default(), &me));
        assert_eq!((counts.unread, counts.more), (UNREAD_COUNTED, true));
        assert_eq!(counts.upto, Some(MsgId::new(u64::from(UNREAD_COUNTED), 0)));
    }
}
