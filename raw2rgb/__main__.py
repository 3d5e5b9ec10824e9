from raw2rgb.cli import main

main()
