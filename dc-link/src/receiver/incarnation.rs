//! Which incarnation of a home topic a mirror copies. A home topic deleted
//! and re-created under the same name is a different log that starts again
//! at offset 0; appending it to a mirror of the old one would give a mirror
//! whose offsets mix both, reported caught up. The mirror topic records the
//! home topic id it was created for, and an offer of another id is refused.

/// The mirror topic config holding the home topic id.
pub const SOURCE_TOPIC_ID: &str = "chronik.mirror.source.topic.id";

/// Whether a mirror that recorded `recorded` (its config; `None` for a
/// mirror created before ids were recorded) may take the offered home
/// topic `offered` (empty from a peer that sends no id). Only two known,
/// different ids are refused: without an id on either side nothing can
/// be told apart, and the mirror behaves as it always did.
pub fn check(topic: &str, recorded: Option<&str>, offered: &str) -> Result<(), String> {
    match recorded.filter(|r| !r.is_empty()) {
        Some(r) if !offered.is_empty() && !r.eq_ignore_ascii_case(offered) => Err(format!(
            "home topic {topic} was deleted and re-created (its id is now {offered}; this mirror copies \
             {r}); the mirror keeps the old incarnation: delete the mirror topic in this region to \
             mirror the new one"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn only_two_known_different_ids_are_refused() {
        let a = "6f1c2a4e-0000-4000-8000-000000000001";
        let b = "6f1c2a4e-0000-4000-8000-000000000002";
        assert!(check("t", Some(a), a).is_ok());
        assert!(check("t", Some(a), &a.to_uppercase()).is_ok());
        let e = check("t", Some(a), b).unwrap_err();
        assert!(
            e.contains("re-created") && e.contains(a) && e.contains(b),
            "{e}"
        );
        assert!(
            check("t", None, b).is_ok(),
            "a mirror from before ids were recorded"
        );
        assert!(check("t", Some(""), b).is_ok());
        assert!(check("t", Some(a), "").is_ok(), "a peer that sends no id");
    }
}
