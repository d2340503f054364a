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

/// Levels (a value and the lists and maps around it) a value may have when it is decoded from
/// the log, a snapshot or a peer: the deepest value validation lets in. Deeper input is refused
/// by the decoder itself, before recursion could exhaust the stack.
pub const VALUE_DECODE_DEPTH_MAX: usize = VALUE_DEPTH_MAX;

/// A property value. Maps are ordered (`BTreeMap`) so their bytes are the same everywhere.
/// Floats compare by bits in preconditions (so `NaN` equals the same `NaN`). Decoding bounds
/// nesting at [`VALUE_DECODE_DEPTH_MAX`].
#[derive(Clone, Debug, Serialize)]
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

/// [`Value`]'s shape for the derived decoder; [`Value`]'s own `Deserialize` wraps it with the
/// depth bound. Same variants in the same order: the same bytes.
#[derive(Deserialize)]
#[serde(remote = "Value")]
enum ValueShape {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    DateTime(i64),
    Duration(i64),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Vector(Vec<f32>),
}

std::thread_local! {
    /// Values being decoded on this thread, outermost to innermost (decoding is synchronous).
    static DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of [`DECODE_DEPTH`], left when dropped (also on an error or a panic).
struct Level;

impl Level {
    fn enter() -> (Level, usize) {
        let depth = DECODE_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        (Level, depth)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let (_level, depth) = Level::enter();
        if depth > VALUE_DECODE_DEPTH_MAX {
            return Err(serde::de::Error::custom(format_args!(
                "a property value nested deeper than {VALUE_DECODE_DEPTH_MAX} levels of lists \
                 and maps"
            )));
        }
        ValueShape::deserialize(d)
    }
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

    /// `n` lists nested in one another around a null, as the codec encodes them, built byte by
    /// byte (encoding it would recurse as deep as decoding it).
    fn nested_lists(n: usize) -> Vec<u8> {
        let one = crate::codec::encode(&Value::List(vec![Value::Null])).unwrap();
        let inner = crate::codec::encode(&Value::Null).unwrap();
        let (header, list) = one.split_at(one.len() - 3);
        assert_eq!(
            &list[2..],
            &inner[header.len()..],
            "a list of one null ends in a null"
        );
        let mut bytes = header.to_vec();
        for _ in 0..n {
            bytes.extend_from_slice(&list[..2]);
        }
        bytes.extend_from_slice(&inner[header.len()..]);
        bytes
    }

    #[test]
    fn decoding_refuses_values_nested_past_the_bound_without_deep_recursion() {
        // The deepest value validation admits decodes.
        let mut v = Value::Int(1);
        for _ in 0..VALUE_DEPTH_MAX - 1 {
            v = Value::List(vec![v]);
        }
        v.validate().unwrap();
        let back: Value = crate::codec::decode(&crate::codec::encode(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        // `n` lists around a null are n + 1 levels: the bound admits 16, refuses 17.
        crate::codec::decode::<Value>(&nested_lists(VALUE_DECODE_DEPTH_MAX - 1)).unwrap();
        let e = crate::codec::decode::<Value>(&nested_lists(VALUE_DECODE_DEPTH_MAX)).unwrap_err();
        assert!(
            e.to_string().contains("nested deeper than 16 levels"),
            "{e}"
        );
        // 100,000 levels (200 KB): refused by name on a 256 KiB stack, where unbounded
        // recursion would overflow it and kill the process.
        let bomb = nested_lists(100_000);
        let e = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                crate::codec::decode::<Value>(&bomb)
                    .unwrap_err()
                    .to_string()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(e.contains("nested deeper than 16 levels"), "{e}");
        // The depth count is back to zero: a value decodes after a refused one.
        let again: Value = crate::codec::decode(&crate::codec::encode(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_ne!(Value::Int(1), Value::DateTime(1));
    }
}
