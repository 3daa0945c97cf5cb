//! Phone numbers, validated and kept in E.164 form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an acceptable phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The text does not parse as an international phone number. Numbers
    /// must start with `+` and the country calling code.
    #[error("not a phone number in international format (expected E.164, such as +33612345678)")]
    Unparseable,
    /// The number parses but is not a valid number for its region.
    #[error("not a valid phone number for its country")]
    Invalid,
    /// A valid number that cannot receive a verification code by SMS.
    #[error(
        "not a mobile number: codes go by SMS, which premium-rate, shared-cost, toll-free, \
         satellite and other service numbers do not receive"
    )]
    NotMobile,
}

/// A validated phone number in E.164 form (`+` then up to 15 digits).
///
/// Phone numbers are personal data. `Debug` is redacted, and `Display`
/// prints the full number only because user interfaces and the legal desk's
/// disclosures need it: never format one into a log line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "+33612345678", pattern = r"^\+[1-9][0-9]{1,14}$"))]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses and validates a number written in international form. Spaces,
    /// dots, dashes and brackets are accepted and dropped.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        // Anything that long is not a phone number; refuse before parsing so
        // that hostile input cannot make the parser work hard.
        if input.len() > 64 || !input.trim_start().starts_with('+') {
            return Err(PhoneError::Unparseable);
        }
        let parsed = phonenumber::parse(None, input).map_err(|_| PhoneError::Unparseable)?;
        if !phonenumber::is_valid(&parsed) {
            return Err(PhoneError::Invalid);
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        Ok(Self(e164))
    }

    /// The number in E.164 form, such as `+33612345678`.
    pub fn e164(&self) -> &str {
        &self.0
    }

    /// Whether the numbering plan says this number receives SMS: a mobile
    /// number, or one the plan cannot tell from a fixed line (as in North
    /// America). Premium-rate, shared-cost, toll-free and other service
    /// numbers do not, nor do the satellite and international networks
    /// (+870, +881, +882, +883): codes sent there cost the operator and
    /// reach no person, which is what SMS pumping exploits (issue 16).
    pub fn is_mobile(&self) -> bool {
        const INTERNATIONAL_NETWORKS: [&str; 4] = ["+870", "+881", "+882", "+883"];
        if INTERNATIONAL_NETWORKS.iter().any(|p| self.0.starts_with(p)) {
            return false;
        }
        let Ok(parsed) = phonenumber::parse(None, &self.0) else {
            return false;
        };
        matches!(
            parsed.number_type(&phonenumber::metadata::DATABASE),
            phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile
        )
    }

    /// The ISO 3166-1 alpha-2 region the number belongs to, such as `FR`,
    /// where the numbering plan names one.
    pub fn region(&self) -> Option<String> {
        let parsed = phonenumber::parse(None, &self.0).ok()?;
        parsed.country().id().map(|id| id.as_ref().to_owned())
    }
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PhoneNumber(<redacted>)")
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // The error text names the rule, never the rejected input.
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let p = PhoneNumber::parse("+33 6 12 34 56 78").unwrap();
        assert_eq!(p.e164(), "+33612345678");
        assert_eq!(p.region().as_deref(), Some("FR"));
        assert_eq!(format!("{p:?}"), "PhoneNumber(<redacted>)");
    }

    #[test]
    fn rejects_bad_numbers_with_distinct_reasons() {
        assert_eq!(
            PhoneNumber::parse("0612345678"),
            Err(PhoneError::Unparseable)
        );
        assert_eq!(PhoneNumber::parse("hello"), Err(PhoneError::Unparseable));
        assert_eq!(
            PhoneNumber::parse("+33 0 12 34 56 78"),
            Err(PhoneError::Invalid)
        );
        assert_eq!(
            PhoneNumber::parse(&"+1".repeat(40)),
            Err(PhoneError::Unparseable)
        );
    }

    #[test]
    fn serde_error_does_not_echo_the_input() {
        let err = serde_json::from_str::<PhoneNumber>("\"+3399999\"").unwrap_err();
        assert!(!err.to_string().contains("3399999"), "{err}");
    }
}

#[cfg(test)]
mod number_type_tests {
    use super::PhoneNumber;

    #[test]
    fn only_numbers_that_receive_sms_are_mobile() {
        for mobile in [
            "+33612345678",
            "+447400123456",
            "+4915123456789",
            "+12025550123",
        ] {
            assert!(PhoneNumber::parse(mobile).unwrap().is_mobile(), "{mobile}");
        }
        // Premium rate and shared cost (France), toll free (UK), satellite
        // (Iridium, Inmarsat), fixed line (Paris).
        for other in [
            "+33891234567",
            "+33810123456",
            "+448001234567",
            "+881612345678",
            "+870773123456",
            "+33123456789",
        ] {
            let number = PhoneNumber::parse(other).unwrap();
            assert!(!number.is_mobile(), "{other}");
        }
    }
}
