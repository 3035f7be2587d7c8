from calctra_agent.cli import main

main()
