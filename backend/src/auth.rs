//! Optional authentication of WebSocket connections with JSON Web Tokens.
//!
//! Off by default: rooms are open and anyone picks a nick. With `--jwt-secret` (HS256) or `--jwt-public-key`
//! (a PEM file: RS256 for an RSA key, ES256 for an EC P-256 key) every WebSocket upgrade must carry a token, as the
//! `token` query parameter (what a browser can send) or `Authorization: Bearer <token>`. The token's `nick` claim
//! (else `sub`) is the only nick the connection may use, an optional `rooms` claim lists the rooms it may join, an
//! optional `roles` claim (`{"room": "moderator"}`, `*` for every room) the rooms it moderates, and when `exp` passes (plus `--jwt-grace-secs`) the connection is closed with 4001.
//!
//! A person's sessions can be revoked (`POST /api/sessions/revoke`, `roomcast revoke`): their tokens issued before a
//! time (the `iat` claim; a token without one counts as revoked) are refused with 401 from then on, and their
//! connections are closed with 4003 (see `session`). Only the algorithm configured is accepted: `none`, and an HS
//! token where a public key is configured (or the reverse), are refused.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::Config;
use crate::bus::Revocations;
use crate::bus::revocation::revokes;
use crate::hub::Grant;

/// How long a request with a token waits for a replica that has not loaded the revoked sessions yet (it just
/// started, or has not reached Redis): without the list it cannot tell a revoked token.
const REVOCATIONS_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    nick: Option<String>,
    rooms: Option<Vec<String>>,
    #[serde(default)]
    roles: std::collections::HashMap<String, String>,
    exp: u64,
    iat: Option<u64>,
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
    /// The person's sessions were revoked after this token was issued.
    #[error(
        "this session was revoked (tokens of its sub issued before {before}, Unix seconds, no longer count): sign in again for a new token"
    )]
    Revoked {
        /// Tokens issued before this no longer count.
        before: u64,
    },
    /// The replica cannot tell yet whether the token was revoked.
    #[error(
        "this replica has not loaded the revoked sessions yet (is Redis reachable?): try again, or another replica"
    )]
    Unchecked,
}

impl AuthError {
    /// The HTTP status that answers it: 401, or 503 when the replica cannot check revocations yet.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unchecked => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Refuses a verified token whose person's sessions were revoked after it was issued (see [`revokes`]); waits up to
/// [`REVOCATIONS_WAIT`] for a replica that has not loaded the revocations yet.
pub async fn not_revoked(grant: Grant, revocations: &Revocations) -> Result<Grant, AuthError> {
    if !revocations.is_loaded()
        && tokio::time::timeout(REVOCATIONS_WAIT, revocations.loaded())
            .await
            .is_err()
    {
        return Err(AuthError::Unchecked);
    }
    match revocations.before(&grant.person) {
        Some(before) if revokes(before, grant.issued) => Err(AuthError::Revoked { before }),
        _ => Ok(grant),
    }
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
            issued: claims.iat,
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
