//! The CBOR encoding of every stored value. cbor4ii encodes serde's *unit* (which is how
//! `serde_json::Value::Null` serialises) as an empty array, so a JSON `null` inside a stored
//! object would come back as `[]` (`lastProbeTime: []`, `limits: []`). [`NullAsNone`] wraps the
//! serializer at every depth and writes unit as CBOR `null`, which decodes back to `null` /
//! `None`.

use serde::ser::{self, Serialize, Serializer};

/// Serialises `value` with units written as CBOR `null`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut ser = cbor4ii::serde::Serializer::new(cbor4ii::core::utils::BufWriter::new(Vec::new()));
    value
        .serialize(NullAsNone(&mut ser))
        .map_err(|e| e.to_string())?;
    Ok(ser.into_inner().into_inner())
}

/// A serializer that forwards to `S`, except that unit becomes `none`.
struct NullAsNone<S>(S);

/// A value serialised through [`NullAsNone`].
struct Wrap<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Wrap<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(NullAsNone(s))
    }
}

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $name(self, $($arg: $ty),*) -> Result<Self::Ok, Self::Error> {
            self.0.$name($($arg),*)
        })*
    };
}

impl<S: Serializer> Serializer for NullAsNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = NullAsNone<S::SerializeSeq>;
    type SerializeTuple = NullAsNone<S::SerializeTuple>;
    type SerializeTupleStruct = NullAsNone<S::SerializeTupleStruct>;
    type SerializeTupleVariant = NullAsNone<S::SerializeTupleVariant>;
    type SerializeMap = NullAsNone<S::SerializeMap>;
    type SerializeStruct = NullAsNone<S::SerializeStruct>;
    type SerializeStructVariant = NullAsNone<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_unit(self) -> Result<Self::Ok, Self::Error> {
        self.0.serialize_none()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Self::Ok, Self::Error> {
        self.0.serialize_some(&Wrap(v))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<Self::Ok, Self::Error> {
        self.0.serialize_newtype_struct(name, &Wrap(v))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Self::Ok, Self::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Wrap(v))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        self.0.serialize_seq(len).map(NullAsNone)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        self.0.serialize_tuple(len).map(NullAsNone)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        self.0.serialize_tuple_struct(name, len).map(NullAsNone)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(NullAsNone)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        self.0.serialize_map(len).map(NullAsNone)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        self.0.serialize_struct(name, len).map(NullAsNone)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(NullAsNone)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident) => {
        impl<S: ser::$trait> ser::$trait for NullAsNone<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Self::Error> {
                self.0.$method(&Wrap(v))
            }
            fn end(self) -> Result<Self::Ok, Self::Error> {
                self.0.end()
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);

impl<S: ser::SerializeMap> ser::SerializeMap for NullAsNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Self::Error> {
        self.0.serialize_key(&Wrap(k))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Self::Error> {
        self.0.serialize_value(&Wrap(v))
    }
    fn end(self) -> Result<Self::Ok, Self::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStruct> ser::SerializeStruct for NullAsNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Self::Error> {
        self.0.serialize_field(key, &Wrap(v))
    }
    fn end(self) -> Result<Self::Ok, Self::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStructVariant> ser::SerializeStructVariant for NullAsNone<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Self::Error> {
        self.0.serialize_field(key, &Wrap(v))
    }
    fn end(self) -> Result<Self::Ok, Self::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn json_nulls_survive_at_every_depth() {
        let v = json!({
            "a": null,
            "b": [null, 1, {"c": null, "d": []}],
            "e": {"f": {"g": null}},
            "h": [],
            "i": {},
        });
        let bytes = super::to_vec(&v).unwrap();
        let back: Value = cbor4ii::serde::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn typed_values_round_trip_unchanged() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct S {
            a: Option<u32>,
            b: Vec<(String, Option<bool>)>,
            #[serde(with = "serde_bytes")]
            c: Vec<u8>,
            d: Value,
        }
        let s = S {
            a: None,
            b: vec![("x".into(), Some(true)), ("y".into(), None)],
            c: vec![1, 2, 3],
            d: json!({"k": null}),
        };
        let bytes = super::to_vec(&s).unwrap();
        let back: S = cbor4ii::serde::from_slice(&bytes).unwrap();
        assert_eq!(back, s);
    }
}
