//! Period bounds, memoised per 15-minute UTC slot, from one source of zone rules.
//!
//! The rules live in Python (tally/core/periods.py, over the pinned tzdata
//! package): a miss asks `Source::bounds` for the period holding one second,
//! and the answer is kept for the slot when the whole slot lies inside that
//! period. Slots cut by a boundary are asked again each time: correct, and
//! rare (a few instants per zone per year).

use rustc_hash::FxHashMap;

pub const SLOT_SECONDS: i64 = 900;
const MAX_ENTRIES: usize = 100_000;

/// Where period bounds come from: (start, end) in POSIX seconds of the
/// period of `unit` in `zone` holding `second`.
pub trait Source {
    fn bounds(&mut self, unit: &str, zone: &str, second: i64) -> Result<(i64, i64), String>;
}

pub struct PeriodCache {
    pub unit: u8,
    pub zone: String,
    slots: FxHashMap<i64, (i64, i64)>,
}

impl PeriodCache {
    pub fn new(unit: u8, zone: String) -> PeriodCache {
        PeriodCache {
            unit,
            zone,
            slots: FxHashMap::default(),
        }
    }

    pub fn bounds(&mut self, micros: i64, source: &mut dyn Source) -> Result<(i64, i64), String> {
        let second = micros.div_euclid(1_000_000);
        let slot = second.div_euclid(SLOT_SECONDS);
        if let Some(&hit) = self.slots.get(&slot) {
            return Ok(hit);
        }
        let unit = crate::metric::UNITS[self.unit as usize];
        let (start, end) = source.bounds(unit, &self.zone, second)?;
        if !(start <= second && second < end) {
            return Err(format!(
                "period [{start}, {end}) of {unit} in {} misses {second}",
                self.zone
            ));
        }
        let slot_start = slot * SLOT_SECONDS;
        if start <= slot_start && slot_start + SLOT_SECONDS <= end {
            if self.slots.len() >= MAX_ENTRIES {
                // Event times cluster around "now": a rare full reset beats LRU bookkeeping.
                self.slots.clear();
            }
            self.slots.insert(slot, (start, end));
        }
        Ok((start, end))
    }
}

/// One cache per (unit, zone), shared by every metric that uses it.
#[derive(Default)]
pub struct PeriodCaches {
    pub caches: Vec<PeriodCache>,
    index: FxHashMap<(u8, String), usize>,
}

impl PeriodCaches {
    pub fn get(&mut self, unit: u8, zone: &str) -> usize {
        if let Some(&i) = self.index.get(&(unit, zone.to_string())) {
            return i;
        }
        self.caches.push(PeriodCache::new(unit, zone.to_string()));
        self.index
            .insert((unit, zone.to_string()), self.caches.len() - 1);
        self.caches.len() - 1
    }
}

/// UTC-only bounds for tests (hours and days only).
#[cfg(test)]
pub struct Utc;

#[cfg(test)]
impl Source for Utc {
    fn bounds(&mut self, unit: &str, _zone: &str, second: i64) -> Result<(i64, i64), String> {
        let size = match unit {
            "hour" => 3600,
            "day" => 86_400,
            _ => return Err(format!("no {unit} here")),
        };
        let start = second.div_euclid(size) * size;
        Ok((start, start + size))
    }
}
