//! An upstream's HTTP/1.1 response, as untrusted bytes, through weir's client codec.
//!
//! The first byte picks how many bytes each read delivers (1 to 256) and whether the request
//! was `HEAD`; the rest is what the upstream sent, its end the connection's close. Whatever
//! the bytes, the reader returns (a response or a reason), the body it decodes is never more
//! than the input, and feeding the same bytes in one piece gives the same outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::internals::read_response;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(pick & 0x7f) * 2 + 1;
    let head_request = pick & 0x80 != 0;
    let piecewise = read_response(input, step, head_request);
    if let Ok(r) = &piecewise {
        assert!(r.body <= input.len());
        assert!(!r.reusable || r.ended);
    }
    let whole = read_response(input, input.len(), head_request);
    assert_eq!(piecewise.is_ok(), whole.is_ok(), "{piecewise:?} vs {whole:?}");
    if let (Ok(a), Ok(b)) = (&piecewise, &whole) {
        assert_eq!((a.status, a.body, a.ended), (b.status, b.body, b.ended));
    }
});
