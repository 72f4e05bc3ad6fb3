from skor_bridge.cli import main

main()
