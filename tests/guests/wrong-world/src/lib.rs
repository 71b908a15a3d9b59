//! Test guest `wrong-world`: a well-formed component of another world (`test:other`),
//! which the host must refuse with a clear message.

wit_bindgen::generate!({
    path: "wit",
    world: "other",
});

struct WrongWorld;

impl Guest for WrongWorld {
    fn hello() -> String {
        "hello from the wrong world".to_owned()
    }
}

export!(WrongWorld);
