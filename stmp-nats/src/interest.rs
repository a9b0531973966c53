//! Which subjects this node listens on: a room's (or user's) subject while it has members
//! here. Two long names may hash to one subject, so interest is counted per subject and the
//! subscription goes only when neither needs it.

use std::collections::HashMap;

/// What to do with a subscription after a change of interest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Subscribe,
    Unsubscribe,
    Keep,
}

/// Names interested in each subject.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    names: HashMap<String, usize>,
}

impl Interest {
    /// A name got its first member here.
    pub(crate) fn add(&mut self, subject: &str) -> Change {
        let count = self.names.entry(subject.to_owned()).or_default();
        *count += 1;
        if *count == 1 {
            Change::Subscribe
        } else {
            Change::Keep
        }
    }

    /// A name lost its last member here.
    pub(crate) fn remove(&mut self, subject: &str) -> Change {
        match self.names.get_mut(subject) {
            Some(count) if *count > 1 => {
                *count -= 1;
                Change::Keep
            }
            Some(_) => {
                self.names.remove(subject);
                Change::Unsubscribe
            }
            // Interest never added: nothing to undo.
            None => Change::Keep,
        }
    }

    /// The subjects listened on.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_subject_stays_until_its_last_name_goes() {
        let mut interest = Interest::default();
        assert_eq!(interest.add("s.room.a"), Change::Subscribe);
        assert_eq!(interest.add("s.room.a"), Change::Keep);
        assert_eq!(interest.remove("s.room.a"), Change::Keep);
        assert_eq!(interest.len(), 1);
        assert_eq!(interest.remove("s.room.a"), Change::Unsubscribe);
        assert_eq!(interest.remove("s.room.a"), Change::Keep);
        assert_eq!(interest.len(), 0);
    }
}
