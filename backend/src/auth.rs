//! Optional authentication of WebSocket connections with JSON Web Tokens.
//!
//! Off by default: rooms are open and anyone picks a nick. With `--jwt-secret` (HS256) or `--jwt-public-key`
//! (a PEM file: RS256 for an RSA key, ES256 for an EC P-256 key) every WebSocket upgrade must carry a token, as the
//! `token` query parameter (what a browser can send) or `Authorization: Bearer <token>`. The token's `nick` claim
//! (else `sub`) is the only nick the connection may use, an optional `rooms` claim lists the rooms it may join, an
//! optional `roles` claim (`{"room": "moderator"}`, `*` for every room) the rooms it moderates, and when `exp` passes (plus `--jwt-grace-secs`) the connection is closed with 4001.

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::Config;
use crate::hub::Grant;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    nick: Option<String>,
    rooms: Option<Vec<String>>,
    #[serde(default)]
    roles: std::collections::HashMap<String, String>,
    exp: u64,
}

/// Why a WebSocket upgrade was refused (answered 401 with this text).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error(
        "a token is required: connect to /ws?token=<JWT> (or send Authorization: Bearer <JWT>)"
    )]
    Missing,
    /// The token has expired.
    #[error("the token has expired: get a fresh one and reconnect")]
    Expired,
    /// The signature, algorithm or format is wrong.
    #[error("the token is not valid here: {0}")]
    Invalid(String),
}

/// Checks tokens against the configured key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier the configuration asks for, `Ok(None)` when authentication is off.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let (key, algorithm) = match (&config.jwt_secret, &config.jwt_public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(
                    "--jwt-secret and --jwt-public-key exclude each other: pick one".into(),
                );
            }
            (Some(secret), None) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(format!(
                        "--jwt-public-key {}: not an RSA or EC public key in PEM",
                        path.display()
                    ));
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Some(Self { key, validation }))
    }

    /// Verifies the token of an upgrade request.
    pub fn check(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Grant, AuthError> {
        let token = token_in(query, headers).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        // The person: the token's subject, whatever nick it names (else the nick: one person, one name).
        let person = claims.sub.clone().or_else(|| claims.nick.clone());
        let nick = claims.nick.or(claims.sub).ok_or_else(|| {
            AuthError::Invalid("the token has neither a nick nor a sub claim".into())
        })?;
        shared::validate::nickname(&nick)
            .map_err(|e| AuthError::Invalid(format!("its nick: {e}")))?;
        Ok(Grant {
            person: person.unwrap_or_else(|| nick.clone()),
            nick,
            rooms: claims.rooms.map(|r| r.into_iter().collect()),
            expires: claims.exp,
            moderates: claims
                .roles
                .into_iter()
                .filter(|(_, role)| role == "moderator")
                .map(|(room, _)| room)
                .collect(),
        })
    }
}

/// The token of a request: `token=` in the query, else `Authorization: Bearer`.
fn token_in(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    });
    from_query.or_else(|| {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(|t| t.trim().to_owned())
    })
}
