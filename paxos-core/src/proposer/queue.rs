//! Commands a leader has accepted from clients and not yet given a slot.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::value::Value;

/// Commands waiting for a slot, oldest first.
#[derive(Clone, Debug, Default, Hash)]
pub(crate) struct Queue {
    /// The commands, in the order they were proposed.
    pub commands: VecDeque<Bytes>,
}

impl Queue {
    /// Takes the next batch: at least one command, then more while under both limits.
    pub fn next_batch(&mut self, bytes_max: usize, commands_max: usize) -> Option<Value> {
        let first = self.commands.pop_front()?;
        let mut bytes = first.len();
        let mut batch = vec![first];
        while batch.len() < commands_max {
            match self.commands.front() {
                Some(c) if bytes + c.len() <= bytes_max => {
                    bytes += c.len();
                    if let Some(c) = self.commands.pop_front() {
                        batch.push(c);
                    }
                }
                _ => break,
            }
        }
        // Invariant: a batch is never empty (a slot holding no command is a `Noop`) and
        // stays within the command limit.
        debug_assert!(
            !batch.is_empty() && batch.len() <= commands_max.max(1),
            "a batch of {} commands",
            batch.len()
        );
        Some(Value::Commands(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits_but_take_at_least_one() {
        let mut q = Queue::default();
        for s in ["aaaa", "bb", "cc", "d"] {
            q.commands.push_back(Bytes::from_static(s.as_bytes()));
        }
        let big = q.next_batch(3, 10);
        assert_eq!(
            big.map(|v| v.commands().len()),
            Some(1),
            "oversized command alone"
        );
        let two = q.next_batch(4, 10);
        assert_eq!(two.map(|v| v.commands().len()), Some(2));
        assert_eq!(q.next_batch(100, 10).map(|v| v.payload_bytes()), Some(1));
        assert!(q.next_batch(100, 10).is_none());
    }
}
