//! The live metrics by event type, compiled from specs, and the registry that
//! gives each metric uid a small id for the life of the process (tables of
//! pending deltas are found by it, across reloads of the definitions).

use rustc_hash::FxHashMap;

use crate::event::{Reads, Segment};
use crate::metric::{Filter, FilterValue, Kind, Metric};
use crate::periods::PeriodCaches;

/// A validated definition, as Python hands it over.
#[derive(Debug, Clone)]
pub struct Spec {
    pub uid: String,
    pub event_type: String,
    pub kind: Kind,
    /// Properties as paths (a plain name is one key).
    pub value_property: Option<Vec<Segment>>,
    /// None, one (group_key is its text) or several (a JSON array).
    pub group_properties: Vec<Vec<Segment>>,
    pub case_sensitive: bool,
    /// (property, negated, listed values)
    pub filters: Vec<(Vec<Segment>, bool, Vec<FilterValue>)>,
    /// (property, must be present)
    pub presence: Vec<(Vec<Segment>, bool)>,
    /// Unit indexes into metric::UNITS.
    pub units: Vec<u8>,
    pub zone: String,
}

#[derive(Default)]
pub struct Registry {
    ids: FxHashMap<String, u32>,
    pub uids: Vec<String>,
}

impl Registry {
    pub fn id(&mut self, uid: &str) -> u32 {
        if let Some(&id) = self.ids.get(uid) {
            return id;
        }
        let id = self.uids.len() as u32;
        self.ids.insert(uid.to_string(), id);
        self.uids.push(uid.to_string());
        id
    }
}

#[derive(Default)]
pub struct Index {
    pub metrics: Vec<Metric>,
    pub uid_ids: Vec<u32>,
    pub by_event_type: FxHashMap<String, Vec<usize>>,
}

impl Index {
    pub fn compile(
        specs: &[Spec],
        registry: &mut Registry,
        reads: &mut Reads,
        caches: &mut PeriodCaches,
    ) -> Index {
        let mut index = Index::default();
        reads.begin();
        for spec in specs {
            let fold = !spec.case_sensitive;
            let mut filters: Vec<Filter> = spec
                .filters
                .iter()
                .map(|(path, negate, values)| {
                    let id = reads.id(path);
                    Filter::new(format!("{path:?}"), id, values, *negate, fold)
                })
                .collect();
            filters.sort_by(|a, b| a.name.cmp(&b.name));
            let presence = spec
                .presence
                .iter()
                .map(|(path, present)| (reads.id(path), *present))
                .collect();
            let mut units = spec.units.clone();
            units.sort_unstable();
            units.dedup();
            let periods = units
                .iter()
                .map(|&u| (u, caches.get(u, &spec.zone)))
                .collect();
            let metric = Metric {
                uid: spec.uid.clone(),
                kind: spec.kind,
                value_property: spec.value_property.as_deref().map(|p| reads.id(p)),
                group_properties: spec.group_properties.iter().map(|p| reads.id(p)).collect(),
                fold,
                filters,
                presence,
                periods,
            };
            index
                .by_event_type
                .entry(spec.event_type.clone())
                .or_default()
                .push(index.metrics.len());
            index.uid_ids.push(registry.id(&spec.uid));
            index.metrics.push(metric);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }
}
