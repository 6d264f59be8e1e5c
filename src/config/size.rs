//! Byte sizes as written in the config: `4096`, `"64KiB"`, `"10MiB"`, `"1GiB"`
//! (also `KB`/`MB`/`GB` as powers of ten).

pub fn parse(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!(
            "{s:?} is not a size (write e.g. 65536, \"64KiB\", \"10MiB\")"
        ));
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("{s:?}: number too large"))?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse("4096").unwrap(), 4096);
        assert_eq!(super::parse("64KiB").unwrap(), 65536);
        assert_eq!(super::parse("10MiB").unwrap(), 10 << 20);
        assert_eq!(super::parse("1GB").unwrap(), 1_000_000_000);
        assert!(super::parse("1 parsec").is_err());
        assert!(super::parse("KiB").is_err());
    }
}
