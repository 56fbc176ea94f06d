//! Tables of schema `public`: columns, types, primary key and size, read in the scan's snapshot.

use serde::{Deserialize, Serialize};

use crate::IntegrityError;

const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const UUID: u32 = 2950;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, e.g. `bigint`, `character varying(40)`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub type_oid: u32,
}

#[derive(Debug, Clone)]
pub struct TableMeta {
    pub name: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in the key's order; empty without a primary key.
    pub primary_key: Vec<usize>,
    pub pages: u64,
}

impl TableMeta {
    pub fn pk_names(&self) -> Vec<String> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.clone())
            .collect()
    }
}

/// `count(*)` of table `name` of schema `public`, in the client's current transaction.
pub(crate) async fn count_rows(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<i64, IntegrityError> {
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM public.{}", quote_ident(name)),
            &[],
        )
        .await
        .map_err(|e| IntegrityError::db(format!("count the rows of table {name}"), e))?
        .get(0))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub async fn tables(client: &tokio_postgres::Client) -> Result<Vec<TableMeta>, IntegrityError> {
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::int8, \
                    coalesce(array_position(con.conkey, a.attnum), 0)::int4, \
                    (pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8 \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                  AND a.attgenerated = '' \
             LEFT JOIN pg_constraint con ON con.conrelid = c.oid AND con.contype = 'p' \
             WHERE n.nspname = 'public' AND c.relkind = 'r' \
             ORDER BY c.relname, a.attnum",
            &[],
        )
        .await
        .map_err(|e| IntegrityError::db("read the tables and columns of schema public", e))?;
    let mut out: Vec<TableMeta> = Vec::new();
    let mut pk_pos: Vec<Vec<(i32, usize)>> = Vec::new();
    for r in rows {
        let table: String = r.get(0);
        if out.last().is_none_or(|t| t.name != table) {
            out.push(TableMeta {
                name: table,
                columns: Vec::new(),
                primary_key: Vec::new(),
                pages: r.get::<_, i64>(5).max(0) as u64,
            });
            pk_pos.push(Vec::new());
        }
        let t = out.last_mut().unwrap();
        let pos: i32 = r.get(4);
        if pos > 0 {
            pk_pos.last_mut().unwrap().push((pos, t.columns.len()));
        }
        t.columns.push(Column {
            name: r.get(1),
            type_name: r.get(2),
            type_oid: r.get::<_, i64>(3) as u32,
        });
    }
    for (t, mut pk) in out.iter_mut().zip(pk_pos) {
        pk.sort();
        t.primary_key = pk.into_iter().map(|(_, i)| i).collect();
    }
    Ok(out)
}

/// Key columns are encoded from their text COPY form so that comparing the bytes orders integers numerically
/// (big-endian on 8 bytes whatever the type's width, sign bit flipped: a key widened from `integer` to `bigint`
/// still matches) and uuids as the server does (their 16 bytes, no length); other types are the length-prefixed text as COPY
/// escaped it (a total order, the same in snapshot and scan).
pub fn encode_key_part(type_oid: u32, value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let bad = |what: &str| {
        format!(
            "key value {:?} is not {what}",
            String::from_utf8_lossy(value)
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| bad("text"));
    match type_oid {
        INT2 | INT4 | INT8 => {}
        UUID => {
            // Fixed width needs no length: 4 bytes less for every row of a table keyed by uuid.
            let raw = uuid_bytes(value).ok_or_else(|| bad("a uuid"))?;
            out.extend_from_slice(&raw);
            return Ok(());
        }
        _ => {
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
            return Ok(());
        }
    };
    let n: i64 = text?.parse().map_err(|_| bad("an integer"))?;
    let mut be = n.to_be_bytes();
    be[0] ^= 0x80;
    out.extend_from_slice(&be);
    Ok(())
}

/// A uuid as PostgreSQL prints it (32 hex digits, dashes anywhere), as its 16 bytes; without allocating, since
/// it runs for every row of a table keyed by uuid.
fn uuid_bytes(text: &[u8]) -> Option<[u8; 16]> {
    let mut raw = [0u8; 16];
    let mut nibbles = 0;
    for &c in text.iter().filter(|&&c| c != b'-') {
        let v = (c as char).to_digit(16)? as u8;
        let byte = raw.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v;
        nibbles += 1;
    }
    (nibbles == 32).then_some(raw)
}

/// The key as a person reads it: `42`, `5f0c…-…`, `acme`, or `(a, b)` for a composite key.
pub fn display_key(types: &[u32], mut key: &[u8]) -> String {
    let mut parts = Vec::with_capacity(types.len());
    for &oid in types {
        let width = match oid {
            INT2 | INT4 | INT8 => Some(8),
            UUID => Some(16),
            _ => None,
        };
        let value: Vec<u8> = match width {
            Some(w) if key.len() >= w => {
                let mut v = key[..w].to_vec();
                if w == 8 {
                    v[0] ^= 0x80;
                }
                key = &key[w..];
                v
            }
            _ if key.len() >= 4 => {
                let n = u32::from_be_bytes([key[0], key[1], key[2], key[3]]) as usize;
                let n = n.min(key.len() - 4);
                let v = key[4..4 + n].to_vec();
                key = &key[4 + n..];
                v
            }
            _ => {
                parts.push("?".to_string());
                continue;
            }
        };
        parts.push(display_value(oid, &value));
    }
    if parts.len() == 1 {
        parts.pop().unwrap()
    } else {
        format!("({})", parts.join(", "))
    }
}

fn display_value(oid: u32, v: &[u8]) -> String {
    match (oid, v.len()) {
        (INT2 | INT4 | INT8, 8) => i64::from_be_bytes(v.try_into().unwrap_or([0; 8])).to_string(),
        (UUID, 16) => {
            let h = hex::encode(v);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        _ => String::from_utf8_lossy(v).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_sort_numerically_and_display_back() {
        let enc = |n: i64| {
            let mut v = Vec::new();
            encode_key_part(INT8, n.to_string().as_bytes(), &mut v).unwrap();
            v
        };
        let mut keys: Vec<i64> = vec![5, -3, 0, i64::MIN, i64::MAX, -1, 300];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|&n| enc(n)).collect();
        encoded.sort();
        keys.sort();
        let shown: Vec<String> = encoded.iter().map(|k| display_key(&[INT8], k)).collect();
        let want: Vec<String> = keys.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, want);
    }

    #[test]
    fn composite_keys_display_each_part() {
        let mut k = Vec::new();
        encode_key_part(INT4, b"-7", &mut k).unwrap();
        encode_key_part(25, b"acme", &mut k).unwrap();
        encode_key_part(UUID, b"5f0c2d9e-0000-4000-8000-00000000002a", &mut k).unwrap();
        assert_eq!(
            display_key(&[INT4, 25, UUID], &k),
            "(-7, acme, 5f0c2d9e-0000-4000-8000-00000000002a)"
        );
    }

    #[test]
    fn an_integer_key_encodes_alike_at_any_width() {
        let enc = |oid: u32| {
            let mut v = Vec::new();
            encode_key_part(oid, b"-300", &mut v).unwrap();
            v
        };
        assert_eq!(enc(INT2), enc(INT8));
        assert_eq!(enc(INT4), enc(INT8));
        assert_eq!(display_key(&[INT2], &enc(INT2)), "-300");
    }

    #[test]
    fn a_key_that_is_not_its_type_is_an_error() {
        let mut k = Vec::new();
        assert!(encode_key_part(INT8, b"12x", &mut k).is_err());
        assert!(encode_key_part(UUID, b"5f0c", &mut k).is_err());
        for bad in [
            &b"5f0c1e2a-0b9d-4c3e-8f71-2a6b4c8d9e0"[..],
            b"5f0c1e2a-0b9d-4c3e-8f71-2a6b4c8d9e0f1",
            b"5f0c1e2a-0b9d-4c3e-8f71-2a6b4c8d9e0g",
            b"5f0c1e2a-0b9d-4c3e-8f71-2a6b4c8d9e\xc3\xa9",
        ] {
            assert!(
                encode_key_part(UUID, bad, &mut k).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_uuid_key_is_its_16_bytes_however_printed() {
        let raw = hex::decode("5f0c1e2a0b9d4c3e8f712a6b4c8d9e0f").unwrap();
        for text in [
            &b"5f0c1e2a-0b9d-4c3e-8f71-2a6b4c8d9e0f"[..],
            b"5F0C1E2A-0B9D-4C3E-8F71-2A6B4C8D9E0F",
            b"5f0c1e2a0b9d4c3e8f712a6b4c8d9e0f",
        ] {
            let mut k = Vec::new();
            encode_key_part(UUID, text, &mut k).unwrap();
            assert_eq!(k, raw);
        }
    }
}
