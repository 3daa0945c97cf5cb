//! Where a user is, for market policy: from the phone number's region and
//! from the request's IP address through an operator-supplied IP-to-country
//! table.
//!
//! The table is a CSV of ranges in the free DB-IP "lite" country format,
//! one range per line: `first_ip,last_ip,country` (IPv4 or IPv6, inclusive,
//! ISO 3166-1 alpha-2). Lines starting with `#` and blank lines are skipped.
//! An address in no range has no country ([`Country::Unknown`]); the
//! documented default is that an unknown address never blocks anyone on its
//! own (see [`Precedence`]).

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LegalError;

/// A country, or none known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Country {
    /// An ISO 3166-1 alpha-2 code.
    Code(String),
    /// No table entry, or no region for the number.
    Unknown,
}

/// Which signal decides when the phone number's region and the request's
/// address disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precedence {
    /// Either signal puts the request in a jurisdiction (the default): an
    /// exited market is left for accounts registered there wherever they
    /// travel, and for anyone connecting from there. This is the choice
    /// that keeps the operator out of a market it has left.
    #[default]
    Either,
    /// Only the phone number's region counts (users who travel keep
    /// service; VPNs do not matter).
    Phone,
    /// Only the address counts (the number is ignored).
    Ip,
}

/// The jurisdictions a request belongs to under a precedence rule. An
/// unknown signal contributes nothing, so an address missing from the table
/// never blocks anyone by itself.
pub fn jurisdictions(
    phone_region: &Country,
    ip_country: &Country,
    precedence: Precedence,
) -> Vec<String> {
    let pick = |c: &Country| match c {
        Country::Code(code) => Some(code.clone()),
        Country::Unknown => None,
    };
    let mut out: Vec<String> = match precedence {
        Precedence::Either => [pick(phone_region), pick(ip_country)]
            .into_iter()
            .flatten()
            .collect(),
        Precedence::Phone => pick(phone_region).into_iter().collect(),
        Precedence::Ip => pick(ip_country).into_iter().collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// An IP-to-country table, sorted for binary search.
#[derive(Debug, Clone, Default)]
pub struct IpTable {
    /// (first, last, country) with addresses as 128-bit numbers (IPv4
    /// mapped into ::ffff:0:0/96 so both families share one ordering).
    ranges: Vec<(u128, u128, String)>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl IpTable {
    /// Parses the CSV text. Every malformed line is reported with its
    /// number; a table with any bad line is refused as a whole, so a typo
    /// cannot silently leave a country unmapped.
    pub fn parse(text: &str) -> Result<Self, LegalError> {
        let mut ranges = Vec::new();
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line
                .split(',')
                .map(|f| f.trim().trim_matches('"'))
                .collect();
            let parsed = (|| {
                let [first, last, country] = fields.as_slice() else {
                    return Err("expected first_ip,last_ip,country");
                };
                let first: IpAddr = first.parse().map_err(|_| "first_ip is not an IP address")?;
                let last: IpAddr = last.parse().map_err(|_| "last_ip is not an IP address")?;
                if first.is_ipv4() != last.is_ipv4() {
                    return Err("first_ip and last_ip are of different families");
                }
                if key(first) > key(last) {
                    return Err("first_ip is after last_ip");
                }
                crate::verify::check_country(country)
                    .map_err(|_| "country is not an ISO 3166-1 alpha-2 code")?;
                Ok((key(first), key(last), (*country).to_owned()))
            })();
            match parsed {
                Ok(range) => ranges.push(range),
                Err(why) => problems.push(format!("line {}: {why}", i + 1)),
            }
        }
        if !problems.is_empty() {
            let shown: Vec<String> = problems.iter().take(5).cloned().collect();
            let more = problems.len().saturating_sub(5);
            let detail = if more > 0 {
                format!("{} (and {more} more)", shown.join("; "))
            } else {
                shown.join("; ")
            };
            return Err(LegalError::Malformed {
                what: "the IP-to-country table",
                detail,
            });
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return Err(LegalError::Malformed {
                    what: "the IP-to-country table",
                    detail: "two ranges overlap".into(),
                });
            }
        }
        Ok(Self { ranges })
    }

    /// Reads and parses a table file.
    pub fn load(path: &Path) -> Result<Self, LegalError> {
        Self::parse(&std::fs::read_to_string(path)?)
    }

    /// The country of an address.
    pub fn country(&self, ip: IpAddr) -> Country {
        let k = key(ip);
        let i = self.ranges.partition_point(|(first, _, _)| *first <= k);
        match i.checked_sub(1).map(|j| &self.ranges[j]) {
            Some((_, last, country)) if k <= *last => Country::Code(country.clone()),
            _ => Country::Unknown,
        }
    }

    /// How many ranges the table holds.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// An IP-to-country source: the CSV table above, or a MaxMind MMDB country
/// (or city) database such as GeoLite2-Country, read with `maxminddb`.
pub enum IpCountries {
    /// A CSV range table.
    Csv(IpTable),
    /// A MaxMind database, held in memory.
    Mmdb(Box<maxminddb::Reader<Vec<u8>>>),
}

impl std::fmt::Debug for IpCountries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Csv(t) => write!(f, "IpCountries::Csv({} ranges)", t.len()),
            Self::Mmdb(r) => write!(f, "IpCountries::Mmdb({})", r.metadata().database_type),
        }
    }
}

/// The part of a MaxMind record we read. GeoIP2 country and city databases
/// both carry `country.iso_code`; `registered_country` is the fallback for
/// ranges MaxMind places by registration only.
#[derive(serde::Deserialize)]
struct MmdbRecord {
    #[serde(default)]
    country: Option<MmdbCountry>,
    #[serde(default)]
    registered_country: Option<MmdbCountry>,
}

#[derive(serde::Deserialize)]
struct MmdbCountry {
    #[serde(default)]
    iso_code: Option<String>,
}

impl IpCountries {
    /// Loads a table: a file ending in `.mmdb` is a MaxMind database, any
    /// other is the CSV format. A file that does not parse is refused whole.
    pub fn load(path: &Path) -> Result<Self, LegalError> {
        let is_mmdb = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mmdb"));
        if !is_mmdb {
            return Ok(Self::Csv(IpTable::load(path)?));
        }
        let bytes = std::fs::read(path)?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| LegalError::Malformed {
            what: "the MaxMind database",
            detail: e.to_string(),
        })?;
        Ok(Self::Mmdb(Box::new(reader)))
    }

    /// The country of an address; [`Country::Unknown`] when the source has
    /// no entry (or, for a damaged MaxMind record, no readable one).
    pub fn country(&self, ip: IpAddr) -> Country {
        match self {
            Self::Csv(table) => table.country(ip),
            Self::Mmdb(reader) => {
                let record = reader
                    .lookup(ip)
                    .ok()
                    .and_then(|found| found.decode::<MmdbRecord>().ok().flatten());
                record
                    .and_then(|r| {
                        r.country
                            .and_then(|c| c.iso_code)
                            .or_else(|| r.registered_country.and_then(|c| c.iso_code))
                    })
                    .filter(|code| crate::verify::check_country(code).is_ok())
                    .map(|code| Country::Code(code.to_ascii_uppercase()))
                    .unwrap_or(Country::Unknown)
            }
        }
    }
}

/// The region of a phone number as a [`Country`].
pub fn phone_country(phone: &redoubt_proto::PhoneNumber) -> Country {
    phone
        .region()
        .map(Country::Code)
        .unwrap_or(Country::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
# test table: loopback addresses standing in for countries
127.0.0.2,127.0.0.2,FR
127.0.0.3,127.0.0.9,DE
\"10.0.0.0\",\"10.255.255.255\",NL
2001:db8::,2001:db8::ffff,FR
";

    fn code(c: &str) -> Country {
        Country::Code(c.into())
    }

    #[test]
    fn addresses_map_to_countries_and_gaps_are_unknown() {
        let table = IpTable::parse(TABLE).unwrap();
        assert_eq!(table.len(), 4);
        assert_eq!(table.country("127.0.0.2".parse().unwrap()), code("FR"));
        assert_eq!(table.country("127.0.0.3".parse().unwrap()), code("DE"));
        assert_eq!(table.country("127.0.0.9".parse().unwrap()), code("DE"));
        assert_eq!(table.country("10.1.2.3".parse().unwrap()), code("NL"));
        assert_eq!(table.country("2001:db8::42".parse().unwrap()), code("FR"));
        assert_eq!(
            table.country("127.0.0.1".parse().unwrap()),
            Country::Unknown
        );
        assert_eq!(
            table.country("127.0.0.10".parse().unwrap()),
            Country::Unknown
        );
        assert_eq!(table.country("::1".parse().unwrap()), Country::Unknown);
    }

    #[test]
    fn bad_tables_are_refused_with_line_numbers() {
        for (text, needle) in [
            ("127.0.0.1,127.0.0.5\n", "line 1"),
            ("1.2.3.4,1.2.3.4,FR\nbanana,1.2.3.4,FR\n", "line 2"),
            ("1.2.3.9,1.2.3.4,FR\n", "after"),
            ("1.2.3.4,2001:db8::,FR\n", "families"),
            ("1.2.3.4,1.2.3.5,France\n", "alpha-2"),
            ("1.2.3.0,1.2.3.9,FR\n1.2.3.5,1.2.3.20,DE\n", "overlap"),
        ] {
            let err = IpTable::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn maxmind_databases_are_read_and_bad_files_refused() {
        use std::collections::BTreeMap;
        #[derive(serde::Serialize)]
        struct GeoCountry {
            iso_code: String,
            names: BTreeMap<String, String>,
        }
        #[derive(serde::Serialize)]
        struct Record {
            country: GeoCountry,
        }
        let mut writer = mmdb_writer::Writer::new("GeoLite2-Country");
        for (net, code) in [("127.0.0.2/32", "FR"), ("10.0.0.0/8", "NL")] {
            let record = Record {
                country: GeoCountry {
                    iso_code: code.into(),
                    names: [("en".to_owned(), code.to_owned())].into(),
                },
            };
            writer
                .insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("countries.mmdb");
        std::fs::write(&path, writer.to_bytes().unwrap()).unwrap();
        let table = IpCountries::load(&path).unwrap();
        assert_eq!(table.country("127.0.0.2".parse().unwrap()), code("FR"));
        assert_eq!(table.country("10.9.8.7".parse().unwrap()), code("NL"));
        assert_eq!(
            table.country("127.0.0.1".parse().unwrap()),
            Country::Unknown
        );

        let bad = dir.path().join("broken.mmdb");
        std::fs::write(&bad, b"not a database").unwrap();
        let err = IpCountries::load(&bad).unwrap_err().to_string();
        assert!(err.contains("MaxMind"), "{err}");
        let csv = dir.path().join("table.csv");
        std::fs::write(&csv, TABLE).unwrap();
        assert_eq!(
            IpCountries::load(&csv)
                .unwrap()
                .country("127.0.0.3".parse().unwrap()),
            code("DE")
        );
    }

    #[test]
    fn precedence_decides_when_signals_disagree() {
        let (fr, de, none) = (code("FR"), code("DE"), Country::Unknown);
        assert_eq!(
            jurisdictions(&fr, &de, Precedence::Either),
            vec!["DE", "FR"]
        );
        assert_eq!(jurisdictions(&fr, &de, Precedence::Phone), vec!["FR"]);
        assert_eq!(jurisdictions(&fr, &de, Precedence::Ip), vec!["DE"]);
        assert_eq!(
            jurisdictions(&fr, &none, Precedence::Ip),
            Vec::<String>::new(),
            "an unmapped address blocks no one"
        );
        assert_eq!(jurisdictions(&fr, &fr, Precedence::Either), vec!["FR"]);
        let number = redoubt_proto::PhoneNumber::parse("+4915112345678").unwrap();
        assert_eq!(phone_country(&number), code("DE"));
    }
}
