//! Config text, as untrusted UTF-8, through `Config::from_toml`; a config that reads must
//! render (`to_toml`) to text that reads back to an equal config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::Config;

fuzz_target!(|src: &str| {
    let Ok(cfg) = Config::from_toml(src, "fuzz.toml") else {
        return;
    };
    let rendered = cfg.to_toml();
    match Config::from_toml(&rendered, "rendered.toml") {
        Ok(again) => assert_eq!(
            cfg, again,
            "rendered config reads back different:\n{rendered}"
        ),
        Err(e) => panic!("rendered config does not read back: {e}\n{rendered}"),
    }
});
