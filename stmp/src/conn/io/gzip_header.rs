//! The header of a gzip member (RFC 1952, 2.3), read as a pure function of the bytes at hand.
//!
//! The gzip reader inflates raw deflate between this header and the trailer it checks itself,
//! rather than letting the inflater parse both: see `inflate.rs`.

/// The longest gzip member header taken. stmp's peers write the 10 bytes of a header with no
/// optional fields; a name, comment or extra field is allowed, but not bytes without end
/// buffered while waiting for a name's terminator.
const MAX_GZIP_HEADER: usize = 1 << 10;

/// The gzip header's flags (RFC 1952, 2.3.1).
const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const FRESERVED: u8 = 0b1110_0000;

/// The length of the gzip member header at the start of `buf`, or `None` while it is not all
/// there yet. Refuses what is not a deflate gzip member, and a header over
/// [`MAX_GZIP_HEADER`].
pub(crate) fn header_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let incomplete = || match buf.len() >= MAX_GZIP_HEADER {
        true => Err("the gzip header is too long"),
        false => Ok(None),
    };
    if buf.len() < 10 {
        if buf
            .iter()
            .zip([0x1f, 0x8b, 8])
            .any(|(got, want)| *got != want)
        {
            return Err("not a gzip stream of deflate data");
        }
        return Ok(None);
    }
    if buf[..3] != [0x1f, 0x8b, 8] {
        return Err("not a gzip stream of deflate data");
    }
    let flags = buf[3];
    if flags & FRESERVED != 0 {
        return Err("the gzip header sets reserved flags");
    }
    let mut end = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = buf.get(end..end + 2) else {
            return incomplete();
        };
        end += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
        if end > MAX_GZIP_HEADER {
            return Err("the gzip header is too long");
        }
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            let Some(nul) = buf
                .get(end..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            else {
                return incomplete();
            };
            end += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        end += 2;
    }
    if end > MAX_GZIP_HEADER {
        return Err("the gzip header is too long");
    }
    match buf.len() >= end {
        true => Ok(Some(end)),
        false => incomplete(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn member(builder: flate2::GzBuilder) -> Vec<u8> {
        let mut encoder = builder.write(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"payload").unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn the_plain_header_is_ten_bytes_and_is_awaited_byte_by_byte() {
        let wire = member(flate2::GzBuilder::new());
        for cut in 0..10 {
            assert_eq!(header_len(&wire[..cut]), Ok(None), "after {cut} bytes");
        }
        assert_eq!(header_len(&wire), Ok(Some(10)));
    }

    #[test]
    fn names_comments_and_extra_fields_are_skipped_whole() {
        let builder = flate2::GzBuilder::new()
            .filename("chat.log")
            .comment("a comment")
            .extra(vec![7; 30]);
        let wire = member(builder);
        let expected = 10 + (2 + 30) + ("chat.log".len() + 1) + ("a comment".len() + 1);
        for cut in 0..expected {
            assert_eq!(header_len(&wire[..cut]), Ok(None), "after {cut} bytes");
        }
        assert_eq!(header_len(&wire), Ok(Some(expected)));
        // What follows is the deflate stream: raw inflate takes it from there.
        let mut plain = Vec::new();
        let mut inflater = flate2::read::DeflateDecoder::new(&wire[expected..]);
        std::io::Read::read_to_end(&mut inflater, &mut plain).unwrap();
        assert_eq!(plain, b"payload");
    }

    #[test]
    fn a_header_crc_is_skipped() {
        let mut header = vec![0x1f, 0x8b, 8, FHCRC | FNAME, 0, 0, 0, 0, 0, 255];
        header.extend_from_slice(b"n\0");
        header.extend_from_slice(&[0xAB, 0xCD]);
        assert_eq!(header_len(&header[..header.len() - 1]), Ok(None));
        assert_eq!(header_len(&header), Ok(Some(14)));
    }

    #[test]
    fn what_is_not_a_deflate_member_is_refused_at_its_first_wrong_byte() {
        assert!(header_len(b"G").is_err(), "not the gzip magic");
        assert!(header_len(&[0x1f, 0x8b, 7]).is_err(), "not deflate");
        let reserved = [0x1f, 0x8b, 8, 0x20, 0, 0, 0, 0, 0, 255];
        assert!(header_len(&reserved).is_err(), "a reserved flag");
    }

    #[test]
    fn a_header_without_end_is_refused_once_it_is_too_long() {
        let mut endless_name = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 255];
        endless_name.resize(MAX_GZIP_HEADER - 1, b'a');
        assert_eq!(header_len(&endless_name), Ok(None));
        endless_name.push(b'a');
        assert!(header_len(&endless_name).is_err());

        let mut long_extra = vec![0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, 0, 255];
        long_extra.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(
            header_len(&long_extra).is_err(),
            "refused before its bytes are awaited"
        );
    }
}
