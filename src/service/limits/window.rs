//! The sliding window, estimated from two fixed windows: the hits of the current window plus
//! the previous window's, weighed by how much of it a window ending now still covers. Two
//! integers per limit, and the same arithmetic in memory, in SQL and in Redis; a log of
//! every request's time would be exact but would cost memory and work per request in
//! proportion to the limit. A burst at a window's edge gets no second allowance, as it
//! would with fixed windows alone.

/// Where `now` falls: the start of its fixed window and the seconds since.
pub fn position(now: i64, window: i64) -> (i64, i64) {
    let start = now.div_euclid(window) * window;
    (start, now - start)
}

/// Whether `cost` more fits: `(current + cost) * w + previous * (w - elapsed) <= limit * w`,
/// the comparison the shared stores make too.
pub fn allows(limit: i64, window: i64, elapsed: i64, current: i64, previous: i64, cost: i64) -> bool {
    let (w, e) = (i128::from(window), i128::from(elapsed));
    (i128::from(current) + i128::from(cost)) * w + i128::from(previous) * (w - e) <= i128::from(limit) * w
}

/// What is left of the limit now (the previous window's weight rounded up).
pub fn remaining(limit: i64, window: i64, elapsed: i64, current: i64, previous: i64) -> u64 {
    let weighed = (i128::from(previous) * i128::from(window - elapsed) + i128::from(window) - 1) / i128::from(window);
    (i128::from(limit) - i128::from(current) - weighed).clamp(0, i128::from(i64::MAX)) as u64
}

/// Seconds until `cost` would fit, if nothing else were counted meanwhile: within this
/// window once enough of the previous one has slid out, or else in the next, once enough
/// of this one has. At least 1 when it does not fit now.
pub fn wait(limit: i64, window: i64, elapsed: i64, current: i64, previous: i64, cost: i64) -> u64 {
    if allows(limit, window, elapsed, current, previous, cost) {
        return 0;
    }
    let w = i128::from(window);
    let room_now = (i128::from(limit) - i128::from(current) - i128::from(cost)) * w;
    if room_now >= 0 && previous > 0 {
        // previous * (w - e') <= room_now
        let at = w - room_now / i128::from(previous);
        return ((at - i128::from(elapsed)).max(1)) as u64;
    }
    let room_next = (i128::from(limit) - i128::from(cost)) * w;
    if room_next < 0 || current <= 0 {
        // More than the whole limit at once, or nothing to wait for: a window from now.
        return window.max(1) as u64;
    }
    let at = (w - room_next / i128::from(current)).max(0);
    ((w - i128::from(elapsed)) + at).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_first_window_exactly_the_limit_passes() {
        let mut current = 0;
        for _ in 0..10 {
            assert!(allows(10, 60, 5, current, 0, 1));
            current += 1;
        }
        assert!(!allows(10, 60, 5, current, 0, 1));
        assert_eq!(remaining(10, 60, 5, current, 0), 0);
    }

    #[test]
    fn the_previous_window_slides_out() {
        // 10 hits last window: at its end nothing is left, half way through half of it.
        assert!(!allows(10, 60, 0, 0, 10, 1));
        assert_eq!(remaining(10, 60, 30, 0, 10), 5);
        assert!(allows(10, 60, 30, 4, 10, 1));
        assert!(!allows(10, 60, 30, 5, 10, 1));
    }

    #[test]
    fn the_wait_is_when_it_would_fit() {
        for (limit, w, e, cur, prev, cost) in [
            (10, 60, 0, 0, 10, 1),
            (10, 60, 30, 5, 10, 1),
            (10, 60, 10, 10, 0, 1),
            (5, 1, 0, 5, 0, 2),
            (3, 60, 59, 3, 3, 1),
        ] {
            let wait = wait(limit, w, e, cur, prev, cost) as i64;
            assert!(wait >= 1);
            // Replays the window at e + wait: it fits then, and not a second earlier.
            let fits_at = |t: i64| {
                let (rolls, e2) = ((e + t) / w, (e + t) % w);
                let (c, p) = match rolls {
                    0 => (cur, prev),
                    1 => (0, cur),
                    _ => (0, 0),
                };
                allows(limit, w, e2, c, p, cost)
            };
            assert!(fits_at(wait), "{limit} {w} {e} {cur} {prev} {cost}: {wait}");
            assert!(!fits_at(wait - 1), "{limit} {w} {e} {cur} {prev} {cost}: {wait}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_more_than_the_limit_in_a_window(limit in 1i64..50, w in 1i64..100, costs in proptest::collection::vec(0i64..5, 0..200)) {
            let mut current = 0;
            for cost in costs {
                if allows(limit, w, 0, current, 0, cost) {
                    current += cost;
                }
            }
            proptest::prop_assert!(current <= limit);
        }
    }
}
