//! The sign-in token, when the deployment requires one (`--jwt-secret`/`--jwt-public-key` on the replicas): the
//! page takes it from its URL fragment (`#token=<JWT>`, which never reaches a server log) or from localStorage, sends
//! it with every connection, and takes the nick from it — the server accepts no other. The browser does not verify
//! the token; the replica does.

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
    let bytes = base64url(payload.trim_end_matches('='))?;
    // From a `str`, as every frame is read: one copy of the JSON reader in the page, not a second for bytes.
    let claims: Claims = serde_json::from_str(std::str::from_utf8(&bytes).ok()?).ok()?;
    Nick::parse(&claims.nick.or(claims.sub)?).ok()
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWTs are written. A dozen lines here instead of a general base64
/// crate in the page.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn base64url_decodes_every_length_as_the_base64_crate_encodes_it() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            assert_eq!(base64url(&URL_SAFE_NO_PAD.encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64url("ab+c"), None, "not the URL-safe alphabet");
    }

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
