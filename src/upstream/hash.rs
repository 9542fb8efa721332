//! Consistent hashing for `balance = "hash"`: a ring of virtual nodes (ketama style) over an
//! upstream's endpoints, and the stable 64-bit hash of the request key that looks it up.
//!
//! Position: step 5 of the walk, endpoint pick of an upstream with `balance = "hash"`.
//! Config: `upstreams.<name>.balance`, `upstreams.<name>.hash_on`. Metrics: none.
//!
//! Each member (endpoint) puts [`VNODES`] points on a 64-bit circle; the points derive from the
//! member's own key bytes (its configured address) and the virtual-node index only, so they do
//! not depend on which other members exist. A request key hashes to a position and belongs to
//! the first point at or after it, going clockwise. Hence when a member leaves, only the keys
//! it owned move (each to the next point of another member, so they spread over the rest), and
//! when a member is skipped as unusable (unhealthy, ejected) only its keys go elsewhere while
//! every other key keeps its owner.

/// A stable 64-bit hash of `bytes`: the same value on every run, platform and release.
///
/// FNV-1a 64 over the bytes, then the MurmurHash3 `fmix64` finalizer, which spreads every
/// input bit over the whole output (FNV-1a alone mixes poorly: its low output bits depend only
/// on the low bits of the input bytes). Not keyed and not collision resistant against an adversary: a client that chooses
/// its key can choose its endpoint, which is what session affinity lets it do anyway.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, bytes))
}

/// The ring over members `0..n`, each member given by its key bytes (its configured address).
///
/// Immutable once built; rebuild it when the member list changes. Holds `n ·` [`VNODES`]
/// points of 16 bytes each (400 KiB for 100 members).
#[derive(Clone, Debug)]
pub struct Ring {
    /// `(position, member index)`, sorted by position, positions unique.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring with [`VNODES`] points per member; `members[i]` is the key of member `i`.
    ///
    /// A member's points are `hash_bytes(key ‖ vnode as u32 little-endian)` for each vnode in
    /// `0..VNODES`. When two points fall on the same position (two members with the same key,
    /// or a 64-bit collision) only the one of the smaller member index is kept, so a repeated
    /// key owns nothing beyond its first occurrence. Members past index `u32::MAX` get no
    /// points.
    pub fn new<K: AsRef<[u8]>>(members: &[K]) -> Ring {
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(members.len().saturating_mul(VNODES));
        for (index, key) in members.iter().enumerate() {
            let Ok(member) = u32::try_from(index) else {
                break;
            };
            let seed = fnv1a(FNV_OFFSET, key.as_ref());
            for vnode in 0..VNODES {
                let vnode = u32::try_from(vnode).unwrap_or(u32::MAX);
                points.push((fmix64(fnv1a(seed, &vnode.to_le_bytes())), member));
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ring { points }
    }

    /// The member owning `hash`: the first point clockwise at or after `hash` (wrapping past
    /// `u64::MAX` to the start) whose member passes `usable(member_index)`.
    ///
    /// `None` when the ring is empty or no member is usable. Walks every point at most once,
    /// so `usable` may be called up to [`VNODES`] times per member when few members pass it.
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(point, _)| point < hash);
        let (before, after) = self.points.split_at_checked(start)?;
        after
            .iter()
            .chain(before)
            .filter_map(|&(_, member)| usize::try_from(member).ok())
            .find(|&member| usable(member))
    }
}

/// FNV-1a 64 of `bytes`, continuing from state `h` ([`FNV_OFFSET`] to start).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The MurmurHash3 64-bit finalizer: a bijection on `u64` with full avalanche.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Points per member on the ring.
///
/// More points even out the members' shares (a share's deviation from fair shrinks like
/// `1/sqrt(VNODES)`) at the cost of memory and build time; lookup is a binary search, so it
/// grows only with `log2(n · VNODES)`. Largest deviation of a member's share of the circle
/// from its fair share, measured for members keyed `10.0.x.y:8080`, `backend-<i>.svc...:80`
/// and `127.0.0.1:<port>`:
///
/// | VNODES | 3 members  | 10 members | 100 members |
/// |--------|------------|------------|-------------|
/// | 100    | 6–7 %      | 15–20 %    | 27–40 %     |
/// | 160    | 2–12 %     | 10–17 %    | 20–25 %     |
/// | 256    | 3–8 %      | 8–11 %     | 13–18 %     |
/// | 512    | 2–11 %     | 7–10 %     | 12–17 %     |
///
/// 256 keeps 100 members within a fifth of fair; past it the gain is small. Counting 100 000
/// random keys instead of arc lengths adds sampling noise (about 3 % per member at 100
/// members): then 3–8 %, 9–10 % and 21–22 %.
pub(crate) const VNODES: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn hash_bytes_matches_its_definition() {
        // FNV-1a 64 published test vectors for the first stage.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        // Golden values of the whole function, computed from the definition elsewhere.
        assert_eq!(hash_bytes(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash_bytes(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(hash_bytes(b"foobar"), 0x2c22_1949_22d1_672b);
        assert_eq!(hash_bytes(b"10.0.0.1:8080"), 0xe8c7_2115_6ed5_2b14);
        // Continuing the FNV state equals hashing the concatenation.
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"foo"), b"bar"),
            fnv1a(FNV_OFFSET, b"foobar")
        );
    }

    #[test]
    fn same_input_same_output() {
        let members = addresses(10);
        let (a, b) = (Ring::new(&members), Ring::new(&members));
        assert_eq!(a.points, b.points);
        assert_eq!(a.points.len(), 10 * VNODES);
        for key in keys(1_000) {
            assert_eq!(
                hash_bytes(&key.to_le_bytes()),
                hash_bytes(&key.to_le_bytes())
            );
            assert_eq!(a.pick(key, |_| true), b.pick(key, |_| true));
        }
    }

    #[test]
    fn points_are_sorted_and_unique() {
        let ring = Ring::new(&addresses(100));
        assert!(ring.points.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn shares_are_within_a_quarter_of_fair() {
        for n in [3, 10, 100] {
            let deviation = max_deviation(&Ring::new(&addresses(n)), n, 100_000);
            assert!(
                deviation < 0.25,
                "{n} members: max deviation {deviation:.3}"
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let members = addresses(10);
        let before = Ring::new(&members);
        let removed = 4;
        let rest: Vec<String> = members
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, m)| m.clone())
            .collect();
        let after = Ring::new(&rest);
        let mut moved_to: HashMap<&str, usize> = HashMap::new();
        for key in keys(100_000) {
            let old = &members[before.pick(key, |_| true).unwrap()];
            let new = &rest[after.pick(key, |_| true).unwrap()];
            if old == &members[removed] {
                *moved_to.entry(new.as_str()).or_default() += 1;
            } else {
                assert_eq!(old, new, "key {key:#x} moved");
            }
        }
        // The removed member's keys spread over most of the others, not onto one neighbour.
        assert!(moved_to.len() >= 7, "moved to {moved_to:?}");
        let total: usize = moved_to.values().sum();
        assert!(moved_to.values().all(|&c| c < total / 2), "{moved_to:?}");
    }

    #[test]
    fn member_order_does_not_matter() {
        let members = addresses(10);
        let reversed: Vec<String> = members.iter().rev().cloned().collect();
        let (a, b) = (Ring::new(&members), Ring::new(&reversed));
        for key in keys(10_000) {
            let x = &members[a.pick(key, |_| true).unwrap()];
            let y = &reversed[b.pick(key, |_| true).unwrap()];
            assert_eq!(x, y);
        }
    }

    #[test]
    fn unusable_member_loses_only_its_keys() {
        let ring = Ring::new(&addresses(10));
        let down = 7;
        let mut moved = HashMap::new();
        for key in keys(100_000) {
            let owner = ring.pick(key, |_| true).unwrap();
            let picked = ring.pick(key, |m| m != down).unwrap();
            assert_ne!(picked, down);
            if owner == down {
                *moved.entry(picked).or_insert(0) += 1;
            } else {
                assert_eq!(owner, picked, "key {key:#x} moved");
            }
        }
        assert!(moved.len() >= 7, "moved to {moved:?}");
    }

    #[test]
    fn only_usable_members_are_picked() {
        let ring = Ring::new(&addresses(10));
        for key in keys(10_000) {
            assert_eq!(ring.pick(key, |m| m == 3), Some(3));
            assert!(matches!(ring.pick(key, |m| m % 2 == 0), Some(m) if m % 2 == 0));
        }
    }

    #[test]
    fn nothing_usable_is_none_after_one_walk() {
        let ring = Ring::new(&addresses(5));
        let calls = std::cell::Cell::new(0);
        let picked = ring.pick(12345, |_| {
            calls.set(calls.get() + 1);
            false
        });
        assert_eq!(picked, None);
        assert_eq!(calls.get(), 5 * VNODES);
    }

    #[test]
    fn empty_ring_picks_nothing() {
        let ring = Ring::new::<&str>(&[]);
        assert_eq!(ring.pick(0, |_| true), None);
        assert_eq!(ring.pick(u64::MAX, |_| true), None);
    }

    #[test]
    fn ring_of_one_always_picks_it() {
        let ring = Ring::new(&["10.0.0.1:8080"]);
        for key in keys(1_000).into_iter().chain([0, u64::MAX]) {
            assert_eq!(ring.pick(key, |_| true), Some(0));
            assert_eq!(ring.pick(key, |_| false), None);
        }
    }

    #[test]
    fn lookup_wraps_past_the_last_point() {
        let ring = Ring::new(&addresses(3));
        let (first, last) = (ring.points[0], ring.points[ring.points.len() - 1]);
        let first_member = usize::try_from(first.1).unwrap();
        assert_eq!(
            ring.pick(last.0.wrapping_add(1), |_| true),
            Some(first_member)
        );
        assert_eq!(ring.pick(u64::MAX, |_| true), Some(first_member));
        assert_eq!(ring.pick(first.0, |_| true), Some(first_member));
        assert_eq!(ring.pick(0, |_| true), Some(first_member));
    }

    #[test]
    fn duplicate_keys_collapse_onto_the_first() {
        let ring = Ring::new(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.1:8080"]);
        assert_eq!(ring.points.len(), 2 * VNODES);
        for key in keys(1_000) {
            assert_ne!(ring.pick(key, |_| true), Some(2));
        }
    }

    /// Largest `|share / fair - 1|` over the members, for `count` random keys.
    fn max_deviation(ring: &Ring, n: usize, count: usize) -> f64 {
        let mut counts = vec![0usize; n];
        for key in keys(count) {
            counts[ring.pick(key, |_| true).unwrap()] += 1;
        }
        let fair = count as f64 / n as f64;
        counts
            .iter()
            .map(|&c| (c as f64 / fair - 1.0).abs())
            .fold(0.0, f64::max)
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    /// `count` request-key hashes: `hash_bytes` of SplitMix64 outputs from a fixed seed.
    fn keys(count: usize) -> Vec<u64> {
        let mut state = 0x5eed_u64;
        (0..count)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                hash_bytes(&(z ^ (z >> 31)).to_le_bytes())
            })
            .collect()
    }
}
