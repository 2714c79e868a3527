//! The sign-in token, when the deployment requires one (`--jwt-secret`/`--jwt-public-key` on the replicas): the
//! page takes it from its URL fragment (`#token=<JWT>`, which never reaches a server log) or from localStorage, sends
//! it with every connection, and takes the nick from it — the server accepts no other. The browser does not verify
//! the token; the replica does.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shared::Nick;

/// The claims the page reads (the replica checks all of them).
#[derive(serde::Deserialize)]
struct Claims {
    nick: Option<String>,
    sub: Option<String>,
}

/// The token in a URL fragment such as `#token=abc.def.ghi` (other fragment parameters are ignored).
pub fn from_fragment(fragment: &str) -> Option<String> {
    fragment
        .trim_start_matches('#')
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| t.split('.').count() == 3)
        .map(str::to_owned)
}

/// The nick a token grants: its `nick` claim, else its `sub`, if it is a valid nick.
pub fn nick(token: &str) -> Option<Nick> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Nick::parse(&claims.nick.or(claims.sub)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn the_nick_comes_from_the_token() {
        assert_eq!(
            nick(&token(r#"{"nick":"alice","sub":"u1"}"#))
                .unwrap()
                .as_str(),
            "alice"
        );
        assert_eq!(nick(&token(r#"{"sub":"bob"}"#)).unwrap().as_str(), "bob");
        assert_eq!(
            nick(&token(r#"{"nick":"Zoë","exp":1}"#)).unwrap().as_str(),
            "Zoë"
        );
        assert!(nick(&token(r#"{"exp":1}"#)).is_none());
        assert!(nick(&token(r#"{"nick":""}"#)).is_none());
        assert!(nick("not-a-token").is_none());
    }

    #[test]
    fn the_fragment_carries_the_token() {
        let t = token(r#"{"nick":"alice"}"#);
        assert_eq!(from_fragment(&format!("#token={t}")), Some(t.clone()));
        assert_eq!(from_fragment(&format!("#x=1&token={t}")), Some(t));
        assert_eq!(from_fragment("#token=garbage"), None);
        assert_eq!(from_fragment(""), None);
    }
}
