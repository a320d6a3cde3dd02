from agent_fabric.cli import main

main()
