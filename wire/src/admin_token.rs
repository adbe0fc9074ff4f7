//! Who may use a Chronik admin HTTP API (broker or dc-link): with a region
//! token configured, only the read-only health and metrics routes are open;
//! every other request must carry `Authorization: Bearer <token>`.

/// Routes that stay open: probes and scrapes carry no token.
pub fn is_open_path(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/health/")
}

/// Does an `Authorization` header value carry `token`?
pub fn authorizes(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell a caller how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What a refused caller is told.
pub const REFUSAL: &str =
    "this admin API needs the region's token (Authorization: Bearer <token>)\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = "0123456789abcdef";
        assert!(authorizes(Some("Bearer 0123456789abcdef"), t));
        assert!(!authorizes(None, t));
        assert!(!authorizes(Some("0123456789abcdef"), t));
        assert!(!authorizes(Some("Bearer 0123456789abcdeX"), t));
        assert!(!authorizes(Some("Bearer 0123456789abcdef0"), t));
        assert!(!authorizes(Some("Bearer "), t));
        assert!(is_open_path("/metrics") && is_open_path("/health/ready"));
        assert!(!is_open_path("/v1/mirror/t/0/5") && !is_open_path("/metrics/x"));
    }
}
