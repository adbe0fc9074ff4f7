//! DescribeUserScramCredentials and AlterUserScramCredentials, with Kafka's
//! checks and error codes (`kafka-configs.sh --entity-type users`).

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;

use chronik_wire::sasl::scram::{MAX_ITERATIONS, MIN_ITERATIONS};
use chronik_wire::sasl::{ScramCredential, ScramHash};

use crate::catalog::ScramUpsert;
use crate::context::BrokerCtx;
use crate::error::KafkaCode;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

pub fn describe(
    ctx: &BrokerCtx,
    req: &DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let users = ctx.catalog.scram_users();
    let info = |creds: &[(ScramHash, u32)]| {
        creds
            .iter()
            .map(|(h, i)| {
                CredentialInfo::default()
                    .with_mechanism(h.type_id())
                    .with_iterations(*i as i32)
            })
            .collect::<Vec<_>>()
    };
    let asked: Vec<String> = req
        .users
        .iter()
        .flatten()
        .map(|u| u.name.to_string())
        .collect();
    let results = if asked.is_empty() {
        users
            .iter()
            .map(|(u, c)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(s(u.clone()))
                    .with_credential_infos(info(c))
            })
            .collect()
    } else {
        let mut seen = BTreeMap::new();
        for u in &asked {
            *seen.entry(u.as_str()).or_insert(0) += 1;
        }
        seen.into_iter()
            .map(|(u, n)| {
                let r = DescribeUserScramCredentialsResult::default().with_user(s(u));
                match users.get(u) {
                    _ if n > 1 => r.with_error_code(E::DuplicateResource.code()).with_error_message(Some(s(
                        "Cannot describe SCRAM credentials for the same user twice in a single request",
                    ))),
                    Some(c) => r.with_credential_infos(info(c)),
                    None => r.with_error_code(E::ResourceNotFound.code()).with_error_message(Some(s(
                        "Attempt to describe a user credential that does not exist",
                    ))),
                }
            })
            .collect()
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// Kafka's checks of one credential change, in its order.
fn check(
    user: &str,
    mechanism: i8,
    upsert: Option<(i32, &[u8], &[u8])>,
) -> Result<ScramHash, (i16, &'static str)> {
    if user.is_empty() {
        return Err((
            E::UnacceptableCredential.code(),
            "Username must not be empty",
        ));
    }
    let hash = ScramHash::from_type(mechanism).ok_or((
        E::UnsupportedSaslMechanism.code(),
        "Unknown SCRAM mechanism",
    ))?;
    if let Some((iterations, salt, salted)) = upsert {
        if iterations < MIN_ITERATIONS as i32 {
            return Err((E::UnacceptableCredential.code(), "Too few iterations"));
        }
        if iterations > MAX_ITERATIONS as i32 {
            return Err((E::UnacceptableCredential.code(), "Too many iterations"));
        }
        if salt.is_empty() || salted.is_empty() {
            return Err((
                E::UnacceptableCredential.code(),
                "Credential must have a salt and a salted password",
            ));
        }
    }
    Ok(hash)
}

pub async fn alter(
    ctx: &BrokerCtx,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // user -> first error; a user is answered once, whatever it asked.
    let mut errors: BTreeMap<String, (i16, String)> = BTreeMap::new();
    let mut users: BTreeSet<String> = BTreeSet::new();
    // Kafka's KRaft controller takes at most one change per user in a
    // request, whatever the mechanisms: two is DUPLICATE_RESOURCE.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut upserts = Vec::new();
    let mut deletions = Vec::new();
    let existing = ctx.catalog.scram_users();
    let mut note = |user: &str, r: Result<(), (i16, &str)>| {
        users.insert(user.to_string());
        let r = r.and_then(|()| {
            if seen.insert(user.to_string()) {
                Ok(())
            } else {
                Err((
                    E::DuplicateResource.code(),
                    "A user credential cannot be altered twice in the same request",
                ))
            }
        });
        match r {
            Ok(()) => true,
            Err((code, msg)) => {
                errors
                    .entry(user.to_string())
                    .or_insert((code, msg.to_string()));
                false
            }
        }
    };
    for d in &req.deletions {
        let user = d.name.to_string();
        let r = check(&user, d.mechanism, None).and_then(|h| {
            if existing
                .get(&user)
                .is_some_and(|c| c.iter().any(|(x, _)| *x == h))
            {
                Ok(())
            } else {
                Err((
                    E::ResourceNotFound.code(),
                    "Attempt to delete a user credential that does not exist",
                ))
            }
        });
        if note(&user, r.map(|_| ())) {
            deletions.push((user, d.mechanism));
        }
    }
    for u in &req.upsertions {
        let user = u.name.to_string();
        let r = check(
            &user,
            u.mechanism,
            Some((u.iterations, &u.salt, &u.salted_password)),
        );
        let hash = r.as_ref().ok().copied();
        if note(&user, r.map(|_| ())) {
            let hash = hash.expect("checked");
            let c = ScramCredential::from_salted_password(
                hash,
                &u.salt,
                &u.salted_password,
                u.iterations as u32,
            );
            upserts.push(ScramUpsert::new(&user, &c));
        }
    }
    // A user with any refused change has none of its changes applied.
    upserts.retain(|u| !errors.contains_key(&u.user));
    deletions.retain(|(u, _)| !errors.contains_key(u));
    let outcome = if upserts.is_empty() && deletions.is_empty() {
        Ok(())
    } else {
        ctx.catalog.alter_scram(upserts, deletions).await
    };
    let results = users
        .into_iter()
        .map(|user| {
            let r = AlterUserScramCredentialsResult::default().with_user(s(user.clone()));
            match (errors.get(&user), &outcome) {
                (Some((code, msg)), _) => r
                    .with_error_code(*code)
                    .with_error_message(Some(s(msg.clone()))),
                (None, Err(e)) => r
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(s(e.to_string()))),
                (None, Ok(())) => r,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}
