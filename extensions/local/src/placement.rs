//! Where a new sandbox goes: the agent with the most free slots (ties: the first listed),
//! then the others in that order as fallbacks; agents that did not answer or are full are
//! left out. Capacity is the sum of the answering agents' slots.

/// What one agent's `GET /v1/health` said, or why it did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Up { slots: u32, free: u32 },
    Down(String),
}

/// The indexes of the agents to try, best first.
pub fn order(seen: &[Seen]) -> Vec<usize> {
    let mut up: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Seen::Up { free, .. } if *free > 0 => Some((i, *free)),
            _ => None,
        })
        .collect();
    // Stable: equal free slots keep the configured order.
    up.sort_by_key(|u| std::cmp::Reverse(u.1));
    up.into_iter().map(|(i, _)| i).collect()
}

/// The pool's size: the sum of the answering agents' slots; `None` when none answered.
pub fn capacity(seen: &[Seen]) -> Option<u32> {
    let mut any = false;
    let mut sum = 0u32;
    for s in seen {
        if let Seen::Up { slots, .. } = s {
            any = true;
            sum = sum.saturating_add(*slots);
        }
    }
    any.then_some(sum)
}

/// Why no agent can take a sandbox, for the error message.
pub fn why_none(urls: &[String], seen: &[Seen]) -> String {
    urls.iter()
        .zip(seen)
        .map(|(u, s)| match s {
            Seen::Up { slots, .. } => format!("{u}: all {slots} slots in use"),
            Seen::Down(why) => format!("{u}: {why}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_free_first_and_down_or_full_agents_left_out() {
        let seen = [
            Seen::Up { slots: 4, free: 1 },
            Seen::Down("connection refused".into()),
            Seen::Up { slots: 8, free: 5 },
            Seen::Up { slots: 2, free: 0 },
            Seen::Up { slots: 6, free: 5 },
        ];
        assert_eq!(order(&seen), [2, 4, 0]);
        assert_eq!(capacity(&seen), Some(20));
        assert_eq!(capacity(&[Seen::Down("x".into())]), None);
        assert!(order(&[Seen::Up { slots: 1, free: 0 }]).is_empty());
        let why = why_none(
            &["http://a".into(), "http://b".into()],
            &[
                Seen::Up { slots: 2, free: 0 },
                Seen::Down("timed out".into()),
            ],
        );
        assert_eq!(why, "http://a: all 2 slots in use; http://b: timed out");
    }
}
