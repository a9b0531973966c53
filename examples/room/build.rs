fn main() -> Result<(), stmp_build::Error> {
    stmp_build::configure().compile(&["proto/room.proto"], &["proto"])
}
