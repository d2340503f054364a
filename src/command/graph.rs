//! The graph model as stored: property values, node and edge records, and their input limits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Bytes in one label, edge type or property key.
pub const NAME_BYTES_MAX: usize = 256;
/// Labels on one node.
pub const LABELS_MAX: usize = 64;
/// Properties on one node or edge (after a write).
pub const PROPERTIES_MAX: usize = 1024;
/// Bytes in one string or bytes value.
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Items in one list, map or vector value.
pub const VALUE_ITEMS_MAX: usize = 65_536;
/// Nesting of lists and maps.
pub const VALUE_DEPTH_MAX: usize = 16;
/// Encoded bytes of one stored node or edge record: updates that would grow one past it are
/// refused, which also bounds every key/value pair a snapshot stream carries.
pub const RECORD_BYTES_MAX: usize = 4 << 20;

/// A property value. Maps are ordered (`BTreeMap`) so their bytes are the same everywhere.
/// Floats compare by bits in preconditions (so `NaN` equals the same `NaN`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    /// Microseconds since the Unix epoch, UTC.
    DateTime(i64),
    /// Nanoseconds.
    Duration(i64),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Vector(Vec<f32>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) | (DateTime(a), DateTime(b)) | (Duration(a), Duration(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (String(a), String(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            (Vector(a), Vector(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }
}

impl Value {
    /// Checks sizes and nesting; returns a reason naming the limit.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_at(1)
    }

    fn validate_at(&self, depth: usize) -> Result<(), String> {
        if depth > VALUE_DEPTH_MAX {
            return Err(format!("nested deeper than {VALUE_DEPTH_MAX}"));
        }
        let items = |n: usize| {
            (n <= VALUE_ITEMS_MAX)
                .then_some(())
                .ok_or(format!("{n} items, limit {VALUE_ITEMS_MAX}"))
        };
        let bytes = |n: usize| {
            (n <= VALUE_BYTES_MAX)
                .then_some(())
                .ok_or(format!("{n} bytes, limit {VALUE_BYTES_MAX}"))
        };
        match self {
            Value::String(s) => bytes(s.len()),
            Value::Bytes(b) => bytes(b.len()),
            Value::Vector(v) => items(v.len()),
            Value::List(l) => {
                items(l.len())?;
                l.iter().try_for_each(|v| v.validate_at(depth + 1))
            }
            Value::Map(m) => {
                items(m.len())?;
                for (k, v) in m {
                    validate_name(k)?;
                    v.validate_at(depth + 1)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Labels, edge types and property keys: 1..=[`NAME_BYTES_MAX`] bytes.
pub fn validate_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty name".into());
    }
    if s.len() > NAME_BYTES_MAX {
        let head: String = s.chars().take(32).collect();
        return Err(format!(
            "name {head:?}... of {} bytes, limit {NAME_BYTES_MAX}",
            s.len()
        ));
    }
    Ok(())
}

pub type Properties = BTreeMap<String, Value>;

/// A node as stored under its id. `version` is the index of the log entry that last changed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub labels: BTreeSet<String>,
    pub properties: Properties,
    pub version: u64,
}

/// An edge as stored under its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub source: u64,
    pub target: u64,
    pub edge_type: String,
    pub properties: Properties,
    pub version: u64,
}

/// A node as a read returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: u64,
    pub labels: BTreeSet<String>,
    pub properties: Properties,
    pub version: u64,
}

/// An edge as a read returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub id: u64,
    pub source: u64,
    pub target: u64,
    pub edge_type: String,
    pub properties: Properties,
    pub version: u64,
}

impl NodeRecord {
    pub fn into_node(self, id: u64) -> Node {
        Node {
            id,
            labels: self.labels,
            properties: self.properties,
            version: self.version,
        }
    }
}

impl EdgeRecord {
    pub fn into_edge(self, id: u64) -> Edge {
        Edge {
            id,
            source: self.source,
            target: self.target,
            edge_type: self.edge_type,
            properties: self.properties,
            version: self.version,
        }
    }
}

/// Which edges of a node a neighbor query follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    Out,
    In,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bounded_in_size_and_depth() {
        let mut v = Value::Int(1);
        for _ in 0..VALUE_DEPTH_MAX - 1 {
            v = Value::List(vec![v]);
        }
        assert!(v.validate().is_ok());
        let deep = Value::List(vec![v]);
        assert!(
            deep.validate()
                .unwrap_err()
                .contains("nested deeper than 16")
        );
        let big = Value::String("x".repeat(VALUE_BYTES_MAX + 1));
        assert!(big.validate().unwrap_err().contains("limit 1048576"));
        let m = Value::Map(BTreeMap::from([(String::new(), Value::Null)]));
        assert!(m.validate().unwrap_err().contains("empty name"));
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::DateTime(1));
    }
}
