//! SASL/PLAIN (RFC 4616): one message, `[authzid] NUL authcid NUL passwd`.
//! It sends the password itself, so it belongs on TLS listeners only; the
//! docs say so and `chronik dev --secure` uses it only over TLS.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    #[error("Authentication failed: invalid PLAIN message ({0})")]
    Malformed(&'static str),
    #[error("Authentication failed: Client requested an authorization id that is different from username")]
    AuthzId,
}

/// The user name and password of a PLAIN message.
pub fn parse(msg: &[u8]) -> Result<(String, Vec<u8>), PlainError> {
    let mut parts = msg.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed("expected three NUL-separated fields"));
    };
    let user =
        std::str::from_utf8(user).map_err(|_| PlainError::Malformed("user name is not UTF-8"))?;
    if user.is_empty() {
        return Err(PlainError::Malformed("empty user name"));
    }
    if password.is_empty() {
        return Err(PlainError::Malformed("empty password"));
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err(PlainError::AuthzId);
    }
    Ok((user.to_string(), password.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_authzid() {
        assert_eq!(
            parse(b"\0alice\0pw").unwrap(),
            ("alice".into(), b"pw".to_vec())
        );
        assert_eq!(
            parse(b"alice\0alice\0pw").unwrap(),
            ("alice".into(), b"pw".to_vec())
        );
    }

    #[test]
    fn refuses_what_rfc4616_and_kafka_refuse() {
        assert_eq!(parse(b"bob\0alice\0pw"), Err(PlainError::AuthzId));
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0\0pw",
            b"\0alice\0",
            b"\0a\0b\0c",
            b"\0\xff\0pw",
        ] {
            assert!(
                matches!(parse(bad), Err(PlainError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
