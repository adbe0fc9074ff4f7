//! Topic names as every region sees them, derived from the topic entries.
//!
//! Topics are keyed by id, so two regions that each created `orders` while
//! cut off hold two entries that never overwrite each other. Which of them
//! is called `orders` is decided here, from the entries alone, so every
//! region with the same entries reaches the same answer: the topic created
//! first (creation HLC, then creating region, then id) keeps the name; each
//! other one is shown as `<name>.conflict-<its creating region>`. The
//! creating region then writes that name into its topic's definition, so
//! the rename sticks even if the winner is deleted later.

use std::collections::{BTreeMap, BTreeSet};

use crate::value::{TopicDef, MAX_TOPIC_NAME_LEN};
use crate::TopicId;

/// The name a topic created in `region` gets when `name` is taken;
/// `attempt` > 1 when that name is taken too. The topic part is shortened
/// so the result stays a legal Kafka topic name.
pub fn conflict_name(name: &str, region: &str, attempt: u32) -> String {
    let suffix = if attempt <= 1 {
        format!(".conflict-{region}")
    } else {
        format!(".conflict-{region}-{attempt}")
    };
    // Topic names are ASCII, so any byte index is a char boundary.
    let keep = name
        .len()
        .min(MAX_TOPIC_NAME_LEN.saturating_sub(suffix.len()));
    format!("{}{suffix}", &name[..keep])
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameView {
    by_id: BTreeMap<TopicId, String>,
    by_name: BTreeMap<String, TopicId>,
    /// Ids shown under another name than their definition asks for.
    displaced: BTreeSet<TopicId>,
}

impl NameView {
    /// `topics`: every live topic's id and definition.
    pub fn compute<'a>(topics: impl IntoIterator<Item = (TopicId, &'a TopicDef)>) -> NameView {
        let mut order: Vec<(TopicId, &TopicDef)> = topics.into_iter().collect();
        order.sort_by(|(ia, a), (ib, b)| {
            (a.created(), &a.creator, ia).cmp(&(b.created(), &b.creator, ib))
        });
        let mut view = NameView::default();
        for (id, def) in order {
            let mut name = def.name.clone();
            let mut attempt = 0;
            while view.by_name.contains_key(&name) {
                attempt += 1;
                name = conflict_name(&def.name, &def.creator, attempt);
            }
            if attempt > 0 {
                view.displaced.insert(id);
            }
            view.by_name.insert(name.clone(), id);
            view.by_id.insert(id, name);
        }
        view
    }

    pub fn name(&self, id: &TopicId) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    pub fn id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    pub fn is_displaced(&self, id: &TopicId) -> bool {
        self.displaced.contains(id)
    }

    pub fn displaced(&self) -> impl Iterator<Item = &TopicId> + '_ {
        self.displaced.iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicId, &str)> + '_ {
        self.by_id.iter().map(|(id, n)| (id, n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, ms: u64, creator: &str) -> TopicDef {
        TopicDef {
            created_ms: ms,
            creator: creator.into(),
            ..TopicDef::new(name, 1, 1)
        }
    }

    #[test]
    fn the_first_created_keeps_the_name_whatever_the_input_order() {
        let a = def("orders", 10, "us-east");
        let b = def("orders", 20, "eu-west");
        let (ia, ib) = (TopicId([1; 16]), TopicId([2; 16]));
        let v1 = NameView::compute([(ia, &a), (ib, &b)]);
        let v2 = NameView::compute([(ib, &b), (ia, &a)]);
        assert_eq!(v1, v2);
        assert_eq!(v1.name(&ia), Some("orders"));
        assert_eq!(v1.name(&ib), Some("orders.conflict-eu-west"));
        assert!(v1.is_displaced(&ib) && !v1.is_displaced(&ia));
    }

    #[test]
    fn a_taken_conflict_name_gets_a_counter_and_long_names_stay_legal() {
        let a = def("t", 1, "r");
        let b = def("t.conflict-s", 2, "q");
        let c = def("t", 3, "s");
        let (ia, ib, ic) = (TopicId([1; 16]), TopicId([2; 16]), TopicId([3; 16]));
        let v = NameView::compute([(ia, &a), (ib, &b), (ic, &c)]);
        assert_eq!(v.name(&ic), Some("t.conflict-s-2"));
        let long = "x".repeat(MAX_TOPIC_NAME_LEN);
        let n = conflict_name(&long, "eu-west", 1);
        assert_eq!(n.len(), MAX_TOPIC_NAME_LEN);
        assert!(n.ends_with(".conflict-eu-west"));
    }
}
