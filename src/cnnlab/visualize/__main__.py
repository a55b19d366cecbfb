from cnnlab.visualize import main

main()
