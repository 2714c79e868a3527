//! Searching messages: the query on screen, the pages of results so far, and whether more can be asked for. An
//! answer to an older query (the person typed on meanwhile) is dropped by its `req`.

use shared::frame::{Found, SearchResults};
use shared::{ClientMsg, ErrorCode};

/// Results asked for per page.
pub const SEARCH_PAGE: usize = 20;

/// A search and what came back for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// The query, as typed.
    pub query: String,
    /// What was found so far, newest first.
    pub results: Vec<Found>,
    /// No older message matches: no "More results".
    pub complete: bool,
    /// A page was asked for and has not come back yet.
    pub loading: bool,
    /// Why the search failed, in words for the person.
    pub error: Option<String>,
    /// The `req` of the request out, so a late answer to an earlier one is not taken for this one's.
    req: u64,
}

impl Search {
    /// Starts a search (request number `n`): the request to send, or why the query cannot be searched.
    pub(super) fn start(query: &str, n: u64) -> (Self, Option<ClientMsg>) {
        let mut search = Self {
            query: query.trim().to_owned(),
            req: n,
            ..Self::default()
        };
        // The limits of `shared::text::query_words`, without calling it: its case folding would bring Unicode's
        // lower-case tables into the page only to count words (the server checks the query again anyway).
        let words = search.query.split_whitespace().count();
        if words == 0
            || words > shared::text::QUERY_MAX_WORDS
            || search.query.chars().count() > shared::text::QUERY_MAX_CHARS
        {
            search.error = Some(format!(
                "Type one to {} words ({} characters at most).",
                shared::text::QUERY_MAX_WORDS,
                shared::text::QUERY_MAX_CHARS
            ));
            search.complete = true;
            return (search, None);
        }
        search.loading = true;
        let msg = search.request(None);
        (search, Some(msg))
    }

    /// The next page's request (request number `n`), unless one is out or nothing older matches.
    pub(super) fn more(&mut self, n: u64) -> Option<ClientMsg> {
        if self.loading || self.complete || self.error.is_some() {
            return None;
        }
        let before = self.results.last()?.message.id;
        self.req = n;
        self.loading = true;
        Some(self.request(Some(before)))
    }

    fn request(&self, before: Option<shared::MsgId>) -> ClientMsg {
        ClientMsg::Search {
            query: self.query.clone(),
            room: None,
            before,
            limit: Some(SEARCH_PAGE),
            req: Some(format!("s{}", self.req)),
        }
    }

    fn answers(&self, req: Option<&str>) -> bool {
        req == Some(format!("s{}", self.req).as_str())
    }

    /// Takes a page of results if it answers the request out.
    pub(super) fn results(&mut self, page: SearchResults) {
        if !self.answers(page.req.as_deref()) {
            return;
        }
        self.loading = false;
        self.complete = page.complete;
        self.results.extend(page.results);
    }

    /// Takes a refusal if it answers the request out.
    pub(super) fn refused(&mut self, req: Option<&str>, code: ErrorCode, message: String) {
        if !self.answers(req) {
            return;
        }
        self.loading = false;
        self.error = Some(match code {
            ErrorCode::NoArchive => {
                "Search needs the server's archive (PostgreSQL), and this server keeps history in Redis only.".into()
            }
            ErrorCode::RateLimited => "Searching too fast: try again in a moment.".into(),
            ErrorCode::Unavailable => "Search is unavailable right now: try again in a moment.".into(),
            _ => message,
        });
    }
}
