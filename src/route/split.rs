//! Weighted choice between a route's targets (traffic split: canary, blue-green).
//!
//! Position: [`crate::route::Route::pick`], right after the router.
//! Config: `routes[].split` (`upstream`, `weight`).

use std::sync::Arc;

use rand::Rng;

/// One weighted target of a traffic split (`routes[].split[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    /// Name of an upstream in `[upstreams]`.
    pub upstream: Arc<str>,
    /// Relative weight; 0 sends nothing. Default 1.
    pub weight: u32,
}

/// Items with integer weights; `pick` returns one with probability weight / total.
#[derive(Debug)]
pub(crate) struct Weighted<T> {
    items: Vec<(T, u64)>, // (item, cumulative weight end)
    total: u64,
}

impl<T> Weighted<T> {
    /// A single item, always picked (no random draw).
    pub(crate) fn one(item: T) -> Self {
        Self {
            items: vec![(item, 1)],
            total: 1,
        }
    }

    /// Items with their weights; zero-weight items are never picked. `None` when `items` is
    /// empty, so a `Weighted` always has something to pick.
    pub(crate) fn new(items: Vec<(T, u32)>) -> Option<Self> {
        if items.is_empty() {
            return None;
        }
        let mut total = 0u64;
        let items = items
            .into_iter()
            .map(|(item, w)| {
                total += u64::from(w);
                (item, total)
            })
            .collect();
        Some(Self { items, total })
    }

    /// Every item, picked or not.
    pub(crate) fn items(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(item, _)| item)
    }

    /// The picked item: the only one, or a draw weighted by the weights (all zero: the first).
    pub(crate) fn pick(&self) -> &T {
        let last = self.items.len() - 1; // never empty: see `one` and `new`
        let idx = if last == 0 || self.total == 0 {
            0
        } else {
            let draw = rand::rng().random_range(0..self.total);
            self.items
                .partition_point(|(_, end)| *end <= draw)
                .min(last)
        };
        &self.items[idx].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights() {
        let w = Weighted::new(vec![("a", 90), ("b", 10), ("c", 0)]).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            match *w.pick() {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                _ => counts[2] += 1,
            }
        }
        assert_eq!(counts[2], 0);
        // 10 % of 20 000 = 2 000; binomial sd ≈ 42, so ±300 is over 7 sd.
        assert!((1700..2300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn one_item_is_always_picked_and_empty_is_refused() {
        let w = Weighted::one(7);
        assert_eq!(*w.pick(), 7);
        assert!(Weighted::<u8>::new(vec![]).is_none());
        let zero = Weighted::new(vec![(1, 0), (2, 0)]).unwrap();
        assert_eq!(*zero.pick(), 1);
    }
}
