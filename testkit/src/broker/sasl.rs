//! The broker's side of the SASL mechanisms Kafka clients use: PLAIN (RFC 4616),
//! SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677; 4096 iterations, as Kafka's default),
//! and OAUTHBEARER (RFC 7628) accepting Amazon MSK IAM-shaped tokens, each written to a log
//! file for the test to check its signature. Crypto is ring's.

use std::collections::HashMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

/// Who may log in, and where OAUTHBEARER tokens are logged (OAUTHBEARER is offered only then).
#[derive(Default)]
pub struct Users {
    pub passwords: HashMap<String, String>,
    pub oauth_log: Option<PathBuf>,
}

impl Users {
    pub fn enabled(&self) -> bool {
        !self.passwords.is_empty() || self.oauth_log.is_some()
    }

    /// The mechanisms offered in SaslHandshake.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.passwords.is_empty() {
            m.extend(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
        }
        if self.oauth_log.is_some() {
            m.push("OAUTHBEARER");
        }
        m
    }
}

/// What one SaslAuthenticate exchange gave.
pub enum Step {
    /// Send these bytes; the client has more to say.
    Continue(Vec<u8>),
    /// Authenticated; send these bytes.
    Done(Vec<u8>),
    /// Refused, with the reason for the client.
    Fail(String),
}

#[derive(Clone, Copy)]
pub struct Scram {
    pbkdf2: pbkdf2::Algorithm,
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
}

const SCRAM_SHA_256: Scram = Scram {
    pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
    hmac: hmac::HMAC_SHA256,
    digest: &digest::SHA256,
};
const SCRAM_SHA_512: Scram = Scram {
    pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
    hmac: hmac::HMAC_SHA512,
    digest: &digest::SHA512,
};
const ITERATIONS: u32 = 4096;

/// One client's authentication, from the mechanism it chose to success or failure.
pub enum Session {
    Plain,
    Scram {
        alg: Scram,
        /// After the first message: (user, client-first-bare, server-first, nonce, salt).
        first: Option<ScramState>,
    },
    OAuthBearer,
}

impl Session {
    pub fn new(mechanism: &str, users: &Users) -> Option<Session> {
        if !users.mechanisms().contains(&mechanism) {
            return None;
        }
        Some(match mechanism {
            "PLAIN" => Session::Plain,
            "SCRAM-SHA-256" => Session::Scram {
                alg: SCRAM_SHA_256,
                first: None,
            },
            "SCRAM-SHA-512" => Session::Scram {
                alg: SCRAM_SHA_512,
                first: None,
            },
            _ => Session::OAuthBearer,
        })
    }

    pub fn step(&mut self, users: &Users, input: &[u8]) -> Step {
        match self {
            Session::Plain => plain(users, input),
            Session::Scram { alg, first } => match first.take() {
                None => match scram_first(users, input) {
                    Ok((state, reply)) => {
                        *first = Some(state);
                        Step::Continue(reply.into_bytes())
                    }
                    Err(why) => Step::Fail(why),
                },
                Some(state) => scram_final(*alg, users, state, input),
            },
            Session::OAuthBearer => oauthbearer(users, input),
        }
    }
}

fn plain(users: &Users, input: &[u8]) -> Step {
    let parts: Vec<&[u8]> = input.split(|b| *b == 0).collect();
    let [_authzid, user, pass] = parts.as_slice() else {
        return Step::Fail("malformed PLAIN message".into());
    };
    let user = String::from_utf8_lossy(user);
    match users.passwords.get(user.as_ref()) {
        Some(p) if p.as_bytes() == *pass => Step::Done(Vec::new()),
        _ => Step::Fail(format!("authentication failed for user {user:?}")),
    }
}

/// `k=v` attributes of a SCRAM message.
fn attrs(msg: &str) -> HashMap<char, &str> {
    msg.split(',')
        .filter_map(|a| {
            let (k, v) = a.split_once('=')?;
            let mut c = k.chars();
            let k = c.next()?;
            c.next().is_none().then_some((k, v))
        })
        .collect()
}

type ScramState = (String, String, String, String, Vec<u8>);

fn scram_first(users: &Users, input: &[u8]) -> Result<(ScramState, String), String> {
    let msg = std::str::from_utf8(input).map_err(|_| "client-first is not UTF-8")?;
    // gs2 header: "n,," (no channel binding) and an optional authzid; then the bare message.
    let bare = msg.splitn(3, ',').nth(2).ok_or("malformed client-first")?;
    let a = attrs(bare);
    let (Some(user), Some(cnonce)) = (a.get(&'n'), a.get(&'r')) else {
        return Err("client-first lacks n= or r=".into());
    };
    let user = user.replace("=2C", ",").replace("=3D", "=");
    if !users.passwords.contains_key(&user) {
        return Err(format!("authentication failed for user {user:?}"));
    }
    let rng = ring::rand::SystemRandom::new();
    let mut salt = vec![0u8; 16];
    let mut snonce = [0u8; 18];
    rng.fill(&mut salt).map_err(|_| "no randomness")?;
    rng.fill(&mut snonce).map_err(|_| "no randomness")?;
    let nonce = format!("{cnonce}{}", STANDARD.encode(snonce));
    let server_first = format!("r={nonce},s={},i={ITERATIONS}", STANDARD.encode(&salt));
    Ok((
        (user, bare.to_string(), server_first.clone(), nonce, salt),
        server_first,
    ))
}

fn scram_final(alg: Scram, users: &Users, state: ScramState, input: &[u8]) -> Step {
    let (user, client_first_bare, server_first, nonce, salt) = state;
    let Ok(msg) = std::str::from_utf8(input) else {
        return Step::Fail("client-final is not UTF-8".into());
    };
    let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
        return Step::Fail("client-final lacks a proof".into());
    };
    if attrs(without_proof).get(&'r') != Some(&nonce.as_str()) {
        return Step::Fail("nonce mismatch".into());
    }
    let Ok(proof) = STANDARD.decode(proof) else {
        return Step::Fail("proof is not base64".into());
    };
    let password = &users.passwords[&user];
    let mut salted = vec![0u8; alg.digest.output_len()];
    let iterations = NonZeroU32::new(ITERATIONS).expect("non-zero");
    pbkdf2::derive(
        alg.pbkdf2,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let salted = hmac::Key::new(alg.hmac, &salted);
    let client_key = hmac::sign(&salted, b"Client Key");
    let stored_key = digest::digest(alg.digest, client_key.as_ref());
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_sig = hmac::sign(
        &hmac::Key::new(alg.hmac, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let expected: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(client_sig.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    if proof != expected {
        return Step::Fail(format!("authentication failed for user {user:?}"));
    }
    let server_key = hmac::sign(&salted, b"Server Key");
    let server_sig = hmac::sign(
        &hmac::Key::new(alg.hmac, server_key.as_ref()),
        auth_message.as_bytes(),
    );
    Step::Done(format!("v={}", STANDARD.encode(server_sig.as_ref())).into_bytes())
}

/// Accepts a token shaped as MSK IAM's (a base64url presigned URL with a SigV4 signature) and
/// logs it, one per line; the test verifies the signature.
fn oauthbearer(users: &Users, input: &[u8]) -> Step {
    let msg = String::from_utf8_lossy(input);
    let Some(token) = msg
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth=Bearer "))
    else {
        return Step::Fail("no bearer token".into());
    };
    let url = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|u| String::from_utf8(u).ok())
        .unwrap_or_default();
    if !url.starts_with("https://kafka.") || !url.contains("X-Amz-Signature=") {
        return Step::Fail("not an MSK IAM token".into());
    }
    if let Some(path) = &users.oauth_log {
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{token}"));
        if let Err(e) = logged {
            return Step::Fail(format!("cannot log the token: {e}"));
        }
    }
    Step::Done(Vec::new())
}
